"""The guest spec: everything the fixups need to know about the VM, typed and validated.

Made from the Plan by si_mkxenvm (:func:`spec_from_plan`), from a VM's record by an update
(:func:`spec_from_record`), or from xen-tools' hook
environment by the xen-tools adapter (``xentools.spec_from_env``); the unit tests render a
spec as that environment (tests/unit/fixups/xtenv.py) to check that both ways make the same spec.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from si_xen.config import BUILTIN
from si_xen.plan import Network, Plan
from si_xen.storage import disk_kind
from si_xen.validate import check_netmask


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
    keep_identity: bool = False  # an update: the VM keeps its keys, machine-id, seeds and leases
    identity_dir: str | None = None  # a rebuild: the old VM's carried keys and machine-id, at their guest paths
    cloud_init: str = "auto"  # auto: a NoCloud seed where the guest has cloud-init; off: cloud-init disabled
    user_data: str = ""  # the checked --user-data document ("" = none; an update keeps the VM's)

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


def spec_from_record(rec, keys_dir: str | None = None, disk: str = "xvda") -> GuestSpec:
    """The spec of a VM as made (``rec``: its VmRecord), for fixups run again by an update: it
    keeps its identity. MAC and addresses are the record's, the rest of the network its recorded
    request's (a record without one, made by si-xen < 0.2: no netmask, gateway or nameservers).
    The image is the one copied: an update gives the new tree as ``image_source``. The mount
    options are the record's, or (a record made before si-xen kept them) the planner's defaults:
    the fstab fixup, run again, writes the VM's fstab as it was."""
    from si_xen.planner import ROOT_OPTIONS  # here: the planner's modules are no fixup's concern
    req = rec.request or {}
    kind = disk_kind(rec.storage or "dir")
    parts = []
    for i, d in enumerate(rec.disks, 1):
        n = d.vdev[len(disk):]
        whole = not (d.vdev.startswith(disk) and n.isdigit())
        name = "swap" if not d.mountpoint else "disk" if d.mountpoint == "/" else d.mountpoint.strip("/").replace("/", "-")
        options = (d.options or (ROOT_OPTIONS.get(d.fs, "defaults") if d.mountpoint == "/" else "defaults")) \
            if d.mountpoint else "sw"
        parts.append(Partition(i if whole else int(n), name, d.size, d.fs, d.mountpoint, options, kind, d.target,
                               d.vdev if whole else ""))
    image = rec.image if rec.image != os.path.basename(rec.image_path.rstrip("/")) else ""
    kernel = req.get("kernel") or ""
    return GuestSpec(hostname=rec.name, net=_recorded_net(rec, req), disk=disk,
                     partitions=tuple(sorted(parts, key=lambda p: p.index)), image_source=rec.image_path, image=image,
                     pygrub=rec.boot != "direct", kernel=kernel, initrd=(req.get("initrd") or "") if kernel else "",
                     hostkeys=keys_dir or "", keep_identity=True, cloud_init=req.get("cloud_init") or "auto")


def _recorded_net(rec, req: dict) -> Network:
    prefix = check_netmask(req["netmask"]) if req.get("netmask") else next(
        (int(ip.partition("/")[2]) for ip in req.get("ips") or () if "/" in ip), None)  # --ip A.B.C.D/N
    mask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask) if prefix is not None and rec.ips else ""
    ns = req.get("nameservers") or ""
    return Network(not rec.ips, tuple(rec.ips), mask, req.get("gateway") or "", req.get("broadcast") or "",
                   tuple(ns.replace(",", " ").split() if isinstance(ns, str) else ns), rec.mac,
                   req.get("bridge") or BUILTIN["bridge"])
