"""Logical volumes HOST-NAME in a volume group (needs device-mapper in the kernel)."""

from __future__ import annotations

import os
import re

from .. import proc
from ..errors import Fatal
from ..made import LogicalVolume, Swap, lv_exists
from ..plan import Disk

COMPLETE = "si_xen_base"


def device_mapper_ok() -> bool:
    try:
        fd = os.open("/dev/mapper/control", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


class LvmBackend:
    """Thick LVs, or with ``pool`` thin LVs whose clones are thin snapshots of a base LV."""

    kind, disk_kind = "lvm", "phy"

    def __init__(self, vg: str, pool: str | None = None, lock_dir: str = "/run/lock/si-xen"):
        self.vg, self.pool, self.lock_dir = vg, pool, lock_dir

    def assign(self, hostname: str, disk: Disk) -> str:
        return f"/dev/{self.vg}/{hostname}-{disk.name}"

    def validate(self, hostname: str, disks: list[Disk], need_mib: int, force: bool) -> None:
        if not re.fullmatch(r"[A-Za-z0-9+_.][A-Za-z0-9+_.-]*", self.vg):
            raise Fatal(f"invalid volume group name '{self.vg}'", "give the name of an existing VG to --lvm")
        if not proc.which("lvcreate"):
            raise Fatal("lvcreate not found", "install lvm2 (apt-get install lvm2) or use --dir")
        if not device_mapper_ok():
            raise Fatal(
                "this kernel has no device-mapper (/dev/mapper/control unusable), so LVM cannot work here",
                "load dm_mod (modprobe dm_mod) or use --dir",
            )
        try:
            out = proc.run(["vgs", "--noheadings", "--units", "m", "--nosuffix", "-o", "vg_free", self.vg]).stdout
        except proc.ProcError:
            raise Fatal(f"volume group '{self.vg}' not found", "check with vgs and give an existing VG to --lvm") from None
        free = int(float(out.strip() or 0))
        total = sum(d.size_mib for d in disks)
        if self.pool:
            attr = proc.run(["lvs", "--noheadings", "-o", "lv_attr", f"{self.vg}/{self.pool}"], ok=(0, 5)).stdout
            if not attr.strip().startswith("t"):
                raise Fatal(f"thin pool '{self.vg}/{self.pool}' not found", "create it (lvcreate -T) or drop --thin-pool")
            free = total  # thin volumes are allocated on write: the pool, not the VG, runs out
        existing = [d for d in disks if lv_exists(d.target)]
        if existing and not force:
            raise Fatal(f"logical volume {existing[0].target} already exists", "remove it with si_rmxenvm or use --force")
        free += sum(self._size(d.target) for d in existing)
        if free < total:
            raise Fatal(f"volume group '{self.vg}' has {free} MiB free, {total} MiB needed", "use a smaller --size/--swap or another VG")

    def _size(self, target: str) -> int:
        out = proc.run(["lvs", "--noheadings", "--units", "m", "--nosuffix", "-o", "lv_size", target]).stdout
        return int(float(out.strip() or 0))

    def create(self, disk: Disk, journal) -> None:
        if lv_exists(disk.target):
            self._remove(disk.target)  # --force was checked in validate()
        lv = os.path.basename(disk.target)
        if self.pool:
            argv = ["lvcreate", "--yes", "-V", f"{disk.size_mib}M", "-T", f"{self.vg}/{self.pool}", "-n", lv]
        else:
            argv = ["lvcreate", "--yes", "--wipesignatures", "y", "-L", f"{disk.size_mib}M", "-n", lv, self.vg]
        journal.made(LogicalVolume(disk.target), proc.run, argv)

    def mount_source(self, target: str) -> tuple[str, list[str]]:
        return target, []

    def _remove(self, target: str) -> None:
        LogicalVolume(target).delete()

    # -- copy-on-write clones (thin snapshots) -------------------------------------------
    def base_target(self, name: str) -> str:
        return f"/dev/{self.vg}/si-base-{name}"

    def have_base(self, base: str) -> bool:
        cp = proc.run(["lvs", "--noheadings", "-o", "lv_tags", base], ok=(0, 5))
        return cp.returncode == 0 and COMPLETE in cp.stdout

    def base_lock(self, image: str) -> str:
        return os.path.join(self.lock_dir, f"base-{self.vg}-{image}.lock")

    def publish_base(self, tmp: str, base: str, meta: dict) -> None:
        proc.run(["lvrename", self.vg, os.path.basename(tmp), os.path.basename(base)])
        # the tag marks it complete; the base is never written again
        proc.run(["lvchange", "--addtag", COMPLETE, "--permission", "r", base])

    def clone(self, base: str, disk: Disk, journal) -> None:
        if lv_exists(disk.target):
            self._remove(disk.target)  # --force was checked in validate()
        lv = os.path.basename(disk.target)
        # -kn: a thin snapshot is skipped at activation by default; a VM disk must come up
        journal.made(LogicalVolume(disk.target), proc.run,
                     ["lvcreate", "--yes", "-s", "-kn", "-n", lv, f"{self.vg}/{os.path.basename(base)}"])
        proc.run(["lvchange", "-ay", f"{self.vg}/{lv}"])  # a snapshot is writable, even of a read-only base

    def remove_base(self, base: str) -> None:
        self._remove(base)

    # -- an update's copy on write (a thin snapshot of a thin LV) ---------------------------
    def snapshot(self, target: str, journal) -> str | None:
        """A thin snapshot ``/dev/VG/LV.upd`` of the VM's thin LV ``target`` for an update to
        work on (journaled before it is made: a failure drops it, the VM is untouched); None
        for a thick LV, which has no cheap copy: the update then works on it in place."""
        if not self._thin(target):
            return None
        new = f"{target}.upd"
        if lv_exists(new):
            self._remove(new)  # a dead run's: its journal named it and was undone, or never written
        journal.made(LogicalVolume(new), self._thin_snapshot, target, new)
        return new

    def _thin(self, target: str) -> bool:
        cp = proc.run(["lvs", "--noheadings", "-o", "pool_lv", target], ok=(0, 5))
        return cp.returncode == 0 and bool(cp.stdout.strip())

    def _thin_snapshot(self, origin: str, new: str) -> None:
        lv = os.path.basename(new)
        proc.run(["lvcreate", "--yes", "-s", "-kn", "-n", lv, f"{self.vg}/{os.path.basename(origin)}"])
        proc.run(["lvchange", "-ay", f"{self.vg}/{lv}"])  # -kn: not skipped, but activate it anyway

    def swap(self, target: str, new: str, journal) -> str:
        """Put the updated snapshot ``new`` in place of ``target`` by two lvrenames (the VM's
        config names ``/dev/VG/LV``, which is the updated LV after them); the old LV becomes
        ``LV.upd-old`` (returned), for the update's discard (a --keep-old rebuild's ``LV.si-old``
        is another). The update's unmount flushed ``new`` (sync_targets), so the journaled Swap
        rolls forward after a crash (made.Swap)."""
        sw = Swap(target, new, f"{target}.upd-old")
        if lv_exists(sw.old):  # an earlier update's, killed after its swap, before its discard
            self._remove(sw.old)
        journal.made(sw, sw.finish)
        return sw.old
