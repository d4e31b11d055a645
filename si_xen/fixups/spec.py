"""The guest spec: everything the fixups need to know about the VM, typed and validated.

Made from the Plan by si_mkxenvm (:func:`spec_from_plan`), or from xen-tools' hook
environment by the xen-tools adapter (``xentools.spec_from_env``); the unit tests render a
spec as that environment (tests/unit/fixups/xtenv.py) to check that both ways make the same spec.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from si_xen.plan import Network, Plan
from si_xen.storage import disk_kind


@dataclass(frozen=True)
class Partition:
    """One xen-tools PARTITIONn: name:size:type:mountpoint:options:imagetype:image."""

    index: int  # N of PARTITIONN = N of /dev/xvdaN
    name: str
    size: str  # as xen-tools writes it (2048M, 2Gb): no fixup reads it
    fstype: str
    mountpoint: str  # "" for swap
    options: str = ""  # "" = defaults
    kind: str = "file"  # file | phy
    target: str = ""  # the image file or device
    vdev: str = ""  # a whole disk of its own (xvdb: Ganeti's disks), else /dev/DISKn


@dataclass(frozen=True)
class GuestSpec:
    hostname: str = ""  # maybe a FQDN; "" = leave the guest's name alone
    net: Network = field(default_factory=lambda: Network(dhcp=True))
    disk: str = "xvda"  # whole-disk name: xvda / hda / sda
    serial: str = "hvc0"
    partitions: tuple[Partition, ...] = ()
    image_source: str = ""  # the image directory (xen-tools' install_source)
    image: str = ""  # the image's name, when image_source is a cache generation or view of it
    pygrub: bool = False  # the guest boots its own kernel through a bootloader (pygrub, pvgrub2)
    kernel: str = ""  # a dom0-supplied kernel, its initrd and modules directory
    initrd: str = ""
    modules: str = ""
    hostkeys: str = ""  # directory of prefetched TYPE, TYPE.pub keys (hostkeys.Prefetch); in-process only

    @property
    def short(self) -> str:
        return self.hostname.split(".")[0]

    @property
    def domain(self) -> str:
        return self.hostname.partition(".")[2]

    @property
    def image_name(self) -> str:
        return self.image or os.path.basename(self.image_source.rstrip("/"))

    @property
    def root_partition(self) -> Partition | None:
        return next((p for p in self.partitions if p.mountpoint == "/"), None)

    def dev(self, part: Partition) -> str:
        return f"/dev/{part.vdev}" if part.vdev else f"/dev/{self.disk}{part.index}"


def spec_from_plan(plan: Plan, keys: str | None = None, disk: str = "xvda") -> GuestSpec:
    """The spec of a planned VM; ``keys``: the directory of its prefetched SSH host keys.
    Disks named DISKn are xen-tools' partitions; others (xvda, xvdb) are whole disks."""
    kind = disk_kind(plan.storage)
    parts = []
    for i, d in enumerate(plan.disks, 1):
        n = d.vdev[len(disk):]
        whole = not (d.vdev.startswith(disk) and n.isdigit())
        parts.append(Partition(i if whole else int(n), d.name, f"{d.size_mib}M", d.fs, d.mountpoint,
                               d.options if d.mountpoint else "", kind, d.target, d.vdev if whole else ""))
    # the name, where the directory's is not it (a cache generation or view)
    image = plan.image_name if plan.image_name != os.path.basename(plan.image_path.rstrip("/")) else ""
    return GuestSpec(image=image, hostname=plan.hostname, net=plan.net, disk=disk, partitions=tuple(sorted(parts, key=lambda p: p.index)),
                     image_source=plan.image_path, pygrub=plan.boot != "direct", kernel=plan.kernel or "",
                     initrd=(plan.initrd or "") if plan.kernel else "", hostkeys=keys or "")
