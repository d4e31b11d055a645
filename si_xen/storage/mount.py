"""Filesystems on the new disks, mounted as one tree for populate and fixups."""

from __future__ import annotations

import os
import tempfile
import time

from .. import proc
from ..plan import Disk
from ..rollback import critical

MKFS = {
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "swap": ["mkswap"],
}


def mkfs(disk: Disk, tree: str | None = None) -> None:
    """Make the filesystem; with ``tree`` (ext3/ext4 only) mke2fs fills it in the same pass."""
    proc.run([*MKFS[disk.fs], *(["-d", tree] if tree else []), disk.target])


def mount_tree(disks: list[Disk], backend, cleanup, hostname: str) -> str:
    """Mount / then the other filesystems (shallowest first) under a fresh directory."""
    with critical():
        top = tempfile.mkdtemp(prefix=f"si-xen.{hostname}.", dir="/run" if os.path.isdir("/run") else None)
        cleanup.push(f"remove {top}", os.rmdir, top)
    for d in sorted((d for d in disks if d.mountpoint), key=lambda d: d.mountpoint.count("/") + len(d.mountpoint) / 1e4):
        where = top if d.mountpoint == "/" else os.path.join(top, d.mountpoint.lstrip("/"))
        os.makedirs(where, exist_ok=True)  # a fresh filesystem: no guest symlinks yet
        source, opts = backend.mount_source(d.target)
        # nouuid: XFS clones of one base share a UUID, and XFS refuses that otherwise
        extra = ["-o", "nouuid"] if d.fs == "xfs" else []
        with critical():
            proc.run(["mount", *opts, *extra, "-t", d.fs, source, where])
            cleanup.push(f"unmount {where}", umount, where)
    return top


def sync_targets(disks: list[Disk]) -> None:
    """Flush just these disks (os.sync would wait for every dirty page of the machine)."""
    for d in disks:
        fd = os.open(d.target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def umount(where: str) -> None:
    # A process killed a moment ago may still hold the filesystem: give it a second.
    for _ in range(10):
        if proc.run(["umount", where], ok=(0, 32)).returncode == 0:
            return
        time.sleep(0.2)
    proc.run(["umount", where])
