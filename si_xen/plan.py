"""The VM to build: one immutable description, validated (si_xen.validate) before anything is touched."""

from __future__ import annotations

import hashlib
import ipaddress
import os
from dataclasses import dataclass, field, replace

from .config import BUILTIN
from .sizes import human

BOOT_MODES = ("direct", "pygrub", "pvgrub2")
TYPES = ("pv", "pvh")
FILESYSTEMS = ("ext3", "ext4", "xfs")


@dataclass(frozen=True)
class Disk:
    """One Xen virtual disk holding one filesystem (xen-tools' partition model)."""

    name: str  # "disk" for /, "swap", else the mountpoint with / -> - ("var", "var-log")
    mountpoint: str  # "" for swap
    fs: str
    size_mib: int
    options: str
    vdev: str = ""  # xvdaN, set by number_disks()
    target: str = ""  # file path or LV device, set by the storage backend


@dataclass(frozen=True)
class Network:
    dhcp: bool
    ips: tuple[str, ...] = ()
    netmask: str = ""
    gateway: str = ""
    broadcast: str = ""
    nameservers: tuple[str, ...] = ()
    mac: str = ""
    bridge: str = BUILTIN["bridge"]

    @property
    def static(self) -> bool:
        return not self.dhcp

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(f"0.0.0.0/{self.netmask}").prefixlen if self.netmask else 0


@dataclass(frozen=True)
class Activation:
    """What becomes of the VM once it is made: registered with a toolstack, started (its
    console attached), started again at the dom0's boot."""

    toolstack: str = BUILTIN["toolstack"]
    start: bool = False
    console: bool = False
    autostart: bool = False


@dataclass(frozen=True)
class Plan:
    hostname: str
    image_name: str
    image_path: str
    os: object  # si_xen.distros.OSInfo
    memory: int
    vcpus: int
    type: str
    boot: str
    disks: tuple[Disk, ...]
    storage: str  # "dir", "lvm" or "given" (storage.backend makes its Storage)
    storage_root: str  # DIR or VG
    net: Network
    cfg_path: str
    maxmem: int | None = None
    kernel: str | None = None  # supplied Xen-capable kernel (else the guest's own)
    initrd: str | None = None
    activation: Activation = field(default_factory=Activation)
    force: bool = False
    layout: str = "default"
    layout_from: str = ""  # the layout file --layout image read (image.open_at says which won)
    thin_pool: str | None = None  # LVM thin pool in the VG: disks are thin LVs, clones thin snapshots
    clone: bool = False  # reflink a cached base disk of the image instead of a full copy
    fingerprint: str = ""  # of the image tree, names its base disks
    excluded: tuple[str, ...] = ()  # guest paths with content the copy leaves out (Survey.excluded)
    fixups_only: tuple[str, ...] = ()
    fixups_skip: tuple[str, ...] = ()
    initramfs: str = "auto"  # auto, slim or image: boot.choose_initramfs
    initramfs_note: str = ""  # what it chose (planner.noted)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def root(self) -> Disk:
        return next(d for d in self.disks if d.mountpoint == "/")

    def with_disks(self, disks) -> Plan:
        return replace(self, disks=tuple(disks))


def stable_mac(hostname: str) -> str:
    """Same hostname, same MAC: a redeployed VM keeps its DHCP lease. Xen's OUI 00:16:3e."""
    h = hashlib.sha256(hostname.encode()).digest()
    return f"00:16:3e:{h[0] & 0x7F:02x}:{h[1]:02x}:{h[2]:02x}"


def number_disks(disks: list[Disk], disk_device: str = "xvda") -> list[Disk]:
    """xen-tools' numbering: sorted by mountpoint length (swap first, then /), N -> xvdaN."""
    ordered = sorted(disks, key=lambda d: len(d.mountpoint))
    return [replace(d, vdev=f"{disk_device}{i}") for i, d in enumerate(ordered, 1)]


def describe(plan: Plan) -> str:
    """The plan as an admin reads it (the --dry-run output)."""
    net = plan.net
    lines = [
        "General Information",
        "--------------------",
        f"Hostname       : {plan.hostname}",
        f"Image          : {plan.image_name} ({plan.image_path})",
        f"Guest OS       : {getattr(plan.os, 'pretty', plan.os)}",
        f"Type / boot    : {plan.type} / {plan.boot}",
        *([f"Initramfs      : {plan.initramfs_note}"] if plan.initramfs_note else []),
        f"Memory         : {plan.memory}M" + (f" (max {plan.maxmem}M)" if plan.maxmem else ""),
        f"VCPUs          : {plan.vcpus}",
        "",
        "Size Information",
        "----------------",
    ]
    for d in plan.disks:
        mp = d.mountpoint or "swap"
        lines.append(f"{d.vdev:<6} {mp:<14} {d.fs:<5} {human(d.size_mib):>6}  {d.target}")
    if plan.layout == "image" and plan.layout_from:
        lines.append(f"Disk layout    : {plan.layout_from}")
    lines += [f"Copy           : {n}" for n in plan.notes]
    if plan.storage == "dir" and not os.path.isdir(plan.storage_root):
        lines.append(f"Storage        : {plan.storage_root} does not exist: made now (as xen-create-image does)")
    lines += ["", "Networking Information", "----------------------"]
    lines.append("IP Address     : " + ("DHCP" if net.dhcp else " ".join(net.ips) + f" / {net.netmask}"))
    if net.gateway:
        lines.append(f"Gateway        : {net.gateway}")
    lines.append(f"MAC Address    : {net.mac}  (bridge {net.bridge})")
    lines.append(f"Config         : {plan.cfg_path}")
    return "\n".join(lines)
