"""Disks someone else made and owns (Ganeti's DISK_N_PATH): block devices or files, used as
they are. Nothing is created or removed here; a failed install leaves the disks to their
owner (Ganeti removes an instance's disks when its creation fails)."""

from __future__ import annotations

import os
import stat

from ..errors import Fatal
from ..plan import Disk


def size_mib(path: str) -> int:
    """A block device's or a file's size, in MiB."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END) // (1024 * 1024)
    finally:
        os.close(fd)


class GivenBackend:
    """A Storage, never a CloneStorage: a given disk is written whole."""

    kind, disk_kind = "given", "phy"

    def assign(self, hostname: str, disk: Disk) -> str:
        return disk.target  # set by whoever planned the disks

    def validate(self, hostname: str, disks: list[Disk], need_mib: int, force: bool) -> None:
        for d in disks:
            try:
                st = os.stat(d.target)
            except OSError as e:
                raise Fatal(f"disk {d.target} of {hostname} cannot be used: {e.strerror}",
                            "check the instance's disks (gnt-instance activate-disks)") from None
            if not (stat.S_ISBLK(st.st_mode) or stat.S_ISREG(st.st_mode)):
                raise Fatal(f"disk {d.target} of {hostname} is neither a block device nor a file",
                            "check the instance's disks (gnt-instance info)")
            have = size_mib(d.target)
            if have < d.size_mib:
                raise Fatal(f"disk {d.target} of {hostname} has {have} MiB, {d.size_mib} MiB needed",
                            "give the instance a bigger disk (gnt-instance grow-disk)")

    def create(self, disk: Disk, journal) -> None:
        pass  # it exists: the filesystem step writes it

    def mount_source(self, target: str) -> tuple[str, list[str]]:
        return target, [] if stat.S_ISBLK(os.stat(target).st_mode) else ["-o", "loop"]

    def snapshot(self, target: str, journal) -> str | None:
        return None  # the owner's disk, whatever it is: updated in place

    def swap(self, target: str, new: str, journal) -> str:
        raise Fatal(f"given disk {target} cannot be swapped: given disks are updated in place",
                    "report this as a bug in si-xen")
