"""Sparse image files under DIR/domains/HOST/, the xen-tools layout."""

from __future__ import annotations

import glob
import json
import os

from .. import atomic
from ..errors import Fatal
from ..made import DiskFile, Swap
from ..plan import Disk
from .reflink import beside, reflink, reflinks_work


class FileBackend:
    kind, disk_kind = "dir", "file"

    def __init__(self, root: str):
        self.root = root

    def vm_dir(self, hostname: str) -> str:
        return os.path.join(self.root, "domains", hostname)

    def assign(self, hostname: str, disk: Disk) -> str:
        return os.path.join(self.vm_dir(hostname), f"{disk.name}.img")

    def validate(self, hostname: str, disks: list[Disk], need_mib: int, force: bool) -> None:
        there = existing_parent(self.root)
        if not os.path.isdir(there) or not os.access(there, os.W_OK):
            raise Fatal(f"storage directory {self.root} cannot be created ({there} is not a writable directory)",
                        "give another --dir")
        for d in disks:
            if os.path.lexists(d.target) and not force:
                raise Fatal(f"disk {d.target} already exists", "remove the VM with si_rmxenvm or use --force")
        st = os.statvfs(there)
        free = st.f_bavail * st.f_frsize // (1024 * 1024)
        if free < need_mib:
            raise Fatal(
                f"{self.root} has {free} MiB free, the VM's data needs {need_mib} MiB",
                "free some space or choose another --dir",
            )

    def _make_room(self, disk: Disk, journal) -> None:
        journal.makedirs(os.path.dirname(disk.target))  # DIR too, as xen-create-image does
        if os.path.lexists(disk.target):
            os.unlink(disk.target)  # --force was checked in validate()

    def create(self, disk: Disk, journal) -> None:
        self._make_room(disk, journal)
        journal.made(DiskFile(disk.target), _sparse, disk.target, disk.size_mib)

    # -- copy-on-write clones (reflinks) ---------------------------------------------------
    def base_target(self, name: str) -> str:
        return os.path.join(self.root, "bases", name + ".img")

    def have_base(self, base: str) -> bool:
        return os.path.isfile(base) and os.path.isfile(beside(base, "json"))

    def base_lock(self, image: str) -> str:
        """One builder per image at a time (parallel batch workers wait here)."""
        return os.path.join(self.root, "bases", f".{image}.lock")

    def publish_base(self, tmp: str, base: str, meta: dict) -> None:
        """Make a fully built base visible; its .json, written last, marks it complete."""
        os.replace(tmp, base)
        atomic.write(beside(base, "json"), json.dumps(meta, indent=1))

    def clone(self, base: str, disk: Disk, journal) -> None:
        self._make_room(disk, journal)
        journal.made(DiskFile(disk.target), reflink, base, disk.target)

    def remove_base(self, base: str) -> None:
        # its .json first: a base without one is incomplete, and no VM clones it
        slims = glob.glob(glob.escape(beside(base, "initrd-xen-")) + "*")  # the Xen-sized initramfs kept with it
        for p in (beside(base, "json"), beside(base, "vmlinuz"), beside(base, "initrd"), *slims, base):
            if os.path.lexists(p):
                os.unlink(p)

    # -- an update's copy on write ------------------------------------------------------------
    def snapshot(self, target: str, journal) -> str | None:
        """A reflink of the VM's disk ``target`` for an update to work on (``target.upd-PID``,
        journaled: a failure drops it and the VM is untouched); None when this directory
        cannot reflink: the update then works on ``target`` itself."""
        if not reflinks_work(os.path.dirname(target)):
            return None
        new = f"{target}.upd-{os.getpid()}"
        if os.path.lexists(new):
            os.unlink(new)  # a dead run's with our pid: its journal named it, nothing else does
        journal.made(DiskFile(new), _copy_on_write, target, new)
        return new

    def swap(self, target: str, new: str, journal) -> str:
        """Put the updated copy ``new`` in place of ``target``; the old disk becomes
        ``target.upd-old`` (returned), for the update's discard (a --keep-old rebuild's
        ``.si-old`` is another). The copy is synced before the Swap is journaled, so a crash
        from then on rolls forward (made.Swap)."""
        fd = os.open(new, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        sw = Swap(target, new, f"{target}.upd-old")
        if os.path.lexists(sw.old):  # an earlier update's, killed after its record, before its discard
            DiskFile(sw.old).delete()
        journal.made(sw, sw.finish)  # the renames, then the directory synced
        return sw.old

    def mount_source(self, target: str) -> tuple[str, list[str]]:
        return target, ["-o", "loop"]


def existing_parent(path: str) -> str:
    """``path`` or its nearest ancestor that exists: where a missing --dir will be made."""
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    return path


def _sparse(path: str, size_mib: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.ftruncate(fd, size_mib * 1024 * 1024)  # sparse: costs only what is written
    finally:
        os.close(fd)



def _copy_on_write(src: str, dst: str) -> None:
    reflink(src, dst)
    os.chmod(dst, os.stat(src).st_mode & 0o7777)
