"""Filesystems on the new disks, mounted as one tree for populate and fixups."""

from __future__ import annotations

import os
import re
import secrets
import subprocess  # TimeoutExpired only: commands run through proc
from collections.abc import Collection

from .. import proc
from ..made import Directory, Mount
from ..plan import Disk
from . import view

MKFS = {
    "ext3": ["mkfs.ext3", "-q", "-F"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "xfs": ["mkfs.xfs", "-q", "-f"],
    "swap": ["mkswap"],
}


def mkfs(disk: Disk, tree: str | None = None, excluded: tuple[str, ...] = ()) -> None:
    """Make the filesystem; with ``tree`` (ext3/ext4 only) mke2fs fills it in the same pass,
    leaving out ``excluded`` (guest paths: directories are masked, files removed after)."""
    argv = [*MKFS[disk.fs], *(["-d", tree] if tree else []), disk.target]
    dirs = tuple(p for p in excluded if tree and os.path.isdir(os.path.join(tree, p.lstrip("/"))))
    proc.run(view.masked(tree, dirs, argv) if tree else argv)
    for f in set(excluded) - set(dirs) if tree else ():
        proc.run(["debugfs", "-w", "-R", f"rm {f}", disk.target])


def mount_tree(disks: list[Disk], backend, journal, hostname: str) -> tuple[str, list]:
    """Mount / then the other filesystems (shallowest first) under a fresh directory.

    Returns the root and the things made, for ``unmount``."""
    # Named before it exists, so the journal can name it first.
    top = os.path.join("/run" if os.path.isdir("/run") else "/tmp", f"si-xen.{hostname}.{secrets.token_hex(4)}")
    made = [journal.made(Directory(top), os.mkdir, top, 0o700)]
    for d in sorted((d for d in disks if d.mountpoint), key=lambda d: d.mountpoint.count("/") + len(d.mountpoint) / 1e4):
        where = top if d.mountpoint == "/" else _mount_point(top, d.mountpoint)
        source, opts = backend.mount_source(d.target)
        # nouuid: XFS clones of one base share a UUID, and XFS refuses that otherwise
        extra = ["-o", "nouuid"] if d.fs == "xfs" else []
        made.append(journal.made(Mount(where, source), proc.run, ["mount", *opts, *extra, "-t", d.fs, source, where]))
    return top, made


# Read-only and never writing: noload skips the replay of an ext3/4 journal (a ro mount would
# otherwise replay it, writing, or fail); norecovery is XFS's (it needs ro). A ro loop mount gets a
# read-only, autoclear loop device (checked: /sys/block/loopN/ro and loop/autoclear are 1).
# errors=remount-ro: a hostile image's superblock saying errors=panic must not panic this host.
RO_OPTS = {"ext3": "ro,noload,errors=remount-ro", "ext4": "ro,noload,errors=remount-ro", "xfs": "ro,norecovery,nouuid"}


def unclean(source: str, fs: str) -> bool:
    """Whether a filesystem's journal holds changes not yet written in place (a VM destroyed, not
    shut down; a copy of a running one). A mount that skips the replay reads a stale tree: an XFS
    copy taken after 50 files were written and synced showed none of them. A journal whose state
    cannot be read counts as dirty: the caller then reads a private copy, replayed."""
    try:
        if fs in ("ext3", "ext4"):  # -f: a feature this e2fsprogs does not know is no reason to refuse
            out = proc.run(["dumpe2fs", "-f", "-h", source], timeout=60).stdout
            return re.search(r"^Filesystem features:.*\bneeds_recovery\b", out, re.M) is not None
        if fs == "xfs":  # the state line comes first; a log it cannot walk exits 1 after it
            out = proc.run(["xfs_logprint", "-t", source], ok=range(256), timeout=120).stdout
            return "state: <CLEAN>" not in out
    except (proc.ProcError, subprocess.TimeoutExpired, OSError):
        return True
    return False


def mount_tree_ro(disks, backend, where: str, replay: bool | Collection[str] = False) -> tuple[list[str], list[str]]:
    """Mount a VM's filesystems read-only under the existing directory ``where``, / first,
    each other one on its mount point as the guest's root fs holds it (resolved confined: a
    guest symlink never leads out). ``disks``: anything with target, fs and mountpoint.
    Returns (mounted, skipped): host mount points to unmount newest first, and the guest mount
    points that the tree lacks as a directory (not read). No journal: run it in a private mount
    namespace (vmread.py), whose death unmounts everything. ``replay`` (True: every disk, or the
    targets named): private copies (reflinked, thin snapshots, converted) mounted writable first,
    so that the journal is replayed into them, then remounted read-only. Only where needed: a
    clean foreign filesystem may have a feature this kernel mounts read-only but not writable."""
    from ..guestfs import Guest

    mounted: list[str] = []
    skipped: list[str] = []
    for d in sorted((d for d in disks if d.mountpoint and d.fs in RO_OPTS),
                    key=lambda d: d.mountpoint.count("/") + len(d.mountpoint) / 1e4):
        at = where if d.mountpoint == "/" else Guest(where).path(d.mountpoint)
        if at != where and (not os.path.isdir(at) or os.path.islink(at)):
            skipped.append(d.mountpoint)
            continue
        source, opts = backend.mount_source(d.target)
        flags = [opts[i + 1] for i, o in enumerate(opts[:-1]) if o == "-o"]  # loop
        # nosuid,nodev,noexec: nothing on an untrusted guest's filesystem is run or opened as a device
        safe = "nosuid,nodev,noexec"
        if replay is True or (replay and d.target in replay):
            # nouuid: clones share their UUID; noinit_itable: no ext4 thread zeroing a copy read once
            extra = {"xfs": ["nouuid"], "ext4": ["noinit_itable", "errors=remount-ro"], "ext3": ["errors=remount-ro"]}.get(d.fs, [])
            proc.run(["mount", "-o", ",".join([safe, *extra, *flags]), "-t", d.fs, source, at])
            proc.run(["mount", "-o", f"remount,ro,{safe}", at])
        else:
            proc.run(["mount", "-o", ",".join([RO_OPTS[d.fs], safe, *flags]), "-t", d.fs, source, at])
        mounted.append(at)
    return mounted, skipped


def _mount_point(top: str, mountpoint: str) -> str:
    """Where a VM's other filesystem goes in its tree: resolved as the guest would, never out of it
    (a clone's or an updated VM's / is the image's or the VM's own: a /var -> /etc link there
    must not put a disk over the host's /etc), made if missing; a file there is refused."""
    from ..errors import Fatal
    from ..guestfs import Guest, GuestPathError

    try:
        where = Guest(top).path(mountpoint)
    except GuestPathError as e:
        raise Fatal(f"mount point {mountpoint} in the VM's tree: {e.reason}", "fix it in the image or the VM") from None
    if os.path.lexists(where) and not os.path.isdir(where) or os.path.islink(where):
        raise Fatal(f"mount point {mountpoint} in the VM's tree is not a directory",
                    "fix it in the image or the VM (it must be a directory)")
    os.makedirs(where, exist_ok=True)  # below top: each component was resolved inside the guest
    return where


def unmount(made: list) -> None:
    """Undo mount_tree now (the journal keeps the entries: deleting them again is a no-op)."""
    for thing in reversed(made):
        thing.delete()


def sync_targets(disks: list[Disk]) -> None:
    """Flush just these disks (os.sync would wait for every dirty page of the machine)."""
    for d in disks:
        fd = os.open(d.target, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def leave(root: str, mounts: list, disks: list, owned: dict, rep, fix: str) -> dict[str, list | None]:
    """Unmount and flush a VM's new tree; returns the lstat facts of the paths si-xen wrote there, as
    it leaves them (the start of the VM's drift; ~50 lstats). ``fix``: what the FATAL tells to do."""
    from ..errors import Fatal
    from ..guestfs import Guest

    guest = Guest(root)
    facts = {p: guest.facts(p) for paths in owned.values() for p in paths}
    with rep.step("Unmounting and syncing"):
        try:
            unmount(mounts)
        except (OSError, proc.ProcError) as e:
            raise Fatal(f"could not unmount the VM's filesystems: {e}", fix) from None
        sync_targets(disks)
    return facts
