"""Where a VM's disks live: sparse files under --dir, LVs in --lvm VG, or disks given by a
cluster manager (Ganeti).

Every backend is a ``Storage``, named by the plan's word for it (``Plan.storage``); those
that can hold base disks and their copy-on-write clones (bases.py) are a ``CloneStorage``.
``create`` and ``clone`` journal the disk they make (journal.py) before making it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..errors import Fatal
from ..plan import Disk, Plan
from .files import FileBackend
from .given import GivenBackend
from .lvm import LvmBackend

if TYPE_CHECKING:
    from ..journal import Journal

LOCK_DIR = "/run/lock/si-xen"


@runtime_checkable
class Storage(Protocol):
    kind: str  # the plan's word: "dir", "lvm" or "given"
    disk_kind: str  # xl's and xen-tools' word for the disks: "file" or "phy"

    def assign(self, hostname: str, disk: Disk) -> str:
        """The disk's target (file path or device) for this VM."""
        ...

    def validate(self, hostname: str, disks: list[Disk], need_mib: int, force: bool) -> None:
        """Fatal unless ``disks`` can be made (room, existing targets unless ``force``)."""
        ...

    def create(self, disk: Disk, journal: Journal) -> None:
        ...

    def mount_source(self, target: str) -> tuple[str, list[str]]:
        """What mount(8) mounts for ``target``, and its options."""
        ...

    def snapshot(self, target: str, journal: Journal) -> str | None:
        """A journaled copy on write of the VM's disk ``target`` for an update to work on (its
        path), or None: this storage cannot make one, and the update works on ``target`` itself."""
        ...

    def swap(self, target: str, new: str, journal: Journal) -> str:
        """The updated copy ``new`` put in place of ``target`` (journaled made.Swap, so a crash
        rolls forward); returns where the old disk went, for the update's discard."""
        ...


@runtime_checkable
class CloneStorage(Storage, Protocol):
    """The storage-specific part of base disks: where one lives, whether it is complete, how
    a fully built one is published and removed, and how a VM's disk becomes its clone."""

    def base_target(self, name: str) -> str:
        ...

    def have_base(self, base: str) -> bool:
        ...

    def base_lock(self, image: str) -> str:
        """The lock that lets one builder at a time make an image's bases."""
        ...

    def publish_base(self, tmp: str, base: str, meta: dict) -> None:
        ...

    def clone(self, base: str, disk: Disk, journal: Journal) -> None:
        ...

    def remove_base(self, base: str) -> None:
        ...


KINDS: dict[str, type[Storage]] = {b.kind: b for b in (FileBackend, LvmBackend, GivenBackend)}


def backend(kind: str, root: str = "", pool: str | None = None, lock_dir: str = LOCK_DIR) -> Storage:
    """The backend of a plan or of a VM's record (same keys: storage, storage_root, thin_pool)."""
    if kind == "given":
        return GivenBackend()
    if kind == "lvm":
        return LvmBackend(root, pool, lock_dir)
    return FileBackend(root)


def backend_for(plan: Plan, lock_dir: str = LOCK_DIR) -> Storage:
    return backend(plan.storage, plan.storage_root, plan.thin_pool, lock_dir)


def disk_kind(kind: str) -> str:
    """xl's and xen-tools' word for the disks of ``kind`` storage."""
    return KINDS[kind].disk_kind


def cloning(storage: Storage) -> CloneStorage:
    """``storage``, if it can hold base disks and their clones."""
    if not isinstance(storage, CloneStorage):
        raise Fatal(f"{storage.kind} storage cannot hold base disks or clones of them",
                    "make a full copy (--full-copy)")
    return storage


__all__ = ["CloneStorage", "FileBackend", "GivenBackend", "LvmBackend", "Storage", "backend", "backend_for",
           "cloning", "disk_kind"]
