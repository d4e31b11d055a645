"""Where a VM's disks live: sparse files under --dir, or LVs in --lvm VG.

Every backend offers the same small interface; ``create`` and ``clone`` journal the disk
they make (journal.py) before making it.
"""

from __future__ import annotations

from ..plan import Plan
from .files import FileBackend
from .lvm import LvmBackend


def backend_for(plan: Plan, lock_dir: str = "/run/lock/si-xen"):
    if plan.storage == "lvm":
        return LvmBackend(plan.storage_root, plan.thin_pool, lock_dir)
    return FileBackend(plan.storage_root)


__all__ = ["FileBackend", "LvmBackend", "backend_for"]
