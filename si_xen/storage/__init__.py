"""Where a VM's disks live: sparse files under --dir, LVs in --lvm VG, or disks given by a
cluster manager (Ganeti).

Every backend offers the same small interface; ``create`` and ``clone`` journal the disk
they make (journal.py) before making it.
"""

from __future__ import annotations

from ..plan import Plan
from .files import FileBackend
from .given import GivenBackend
from .lvm import LvmBackend


def backend_for(plan: Plan, lock_dir: str = "/run/lock/si-xen"):
    if plan.storage == "given":
        return GivenBackend()
    if plan.storage == "lvm":
        return LvmBackend(plan.storage_root, plan.thin_pool, lock_dir)
    return FileBackend(plan.storage_root)


__all__ = ["FileBackend", "GivenBackend", "LvmBackend", "backend_for"]
