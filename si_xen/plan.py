"""The VM to build: one immutable description, validated before anything is touched."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field, replace

from .errors import Fatal
from .sizes import human

BOOT_MODES = ("direct", "pygrub", "pvgrub2")
TYPES = ("pv", "pvh")
FILESYSTEMS = ("ext3", "ext4", "xfs")
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


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
    bridge: str = "xenbr0"


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
    storage: str  # "dir" | "lvm"
    storage_root: str  # DIR or VG
    net: Network
    cfg_path: str
    maxmem: int | None = None
    kernel: str | None = None  # supplied Xen-capable kernel (else the guest's own)
    initrd: str | None = None
    toolstack: str = "xl"
    start: bool = False
    console: bool = False
    autostart: bool = False
    force: bool = False
    layout: str = "default"
    thin_pool: str | None = None  # LVM thin pool in the VG: disks are thin LVs, clones thin snapshots
    clone: bool = False  # reflink a cached base disk of the image instead of a full copy
    fingerprint: str = ""  # of the image tree, names its base disks
    fixups_only: tuple[str, ...] = ()
    fixups_skip: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.hostname

    @property
    def root(self) -> Disk:
        return next(d for d in self.disks if d.mountpoint == "/")

    def with_disks(self, disks) -> Plan:
        return replace(self, disks=tuple(disks))


# -- validation helpers -------------------------------------------------------------------
def check_hostname(name: str) -> str:
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise Fatal(
            f"invalid hostname '{name}'",
            "use letters, digits and '-' (RFC 1123), labels of at most 63 characters",
        )
    return name


def stable_mac(hostname: str) -> str:
    """Same hostname, same MAC: a redeployed VM keeps its DHCP lease. Xen's OUI 00:16:3e."""
    h = hashlib.sha256(hostname.encode()).digest()
    return f"00:16:3e:{h[0] & 0x7F:02x}:{h[1]:02x}:{h[2]:02x}"


def check_mac(mac: str) -> str:
    if not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}", mac):
        raise Fatal(f"invalid MAC address '{mac}'", "use six hex pairs, e.g. 00:16:3e:12:34:56")
    if int(mac[:2], 16) & 1:
        raise Fatal(f"MAC address '{mac}' is a multicast address", "the first byte must be even, e.g. 00:16:3e:..")
    return mac.lower()


def _addr(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise Fatal(f"invalid {what} '{text}'", "use a dotted IPv4 address, e.g. 192.168.1.10") from None


def check_network(dhcp: bool, ips, netmask, gateway, broadcast, nameservers, mac, bridge) -> Network:
    if dhcp and ips:
        raise Fatal("both --dhcp and --ip given", "choose DHCP or static addresses, not both")
    if not dhcp and not ips:
        raise Fatal("no network configuration given", "use --dhcp, or --ip with --netmask and --gateway")
    addrs: list[str] = []
    prefix = None
    for ip in ips:
        if "/" in ip:
            try:
                iface = ipaddress.IPv4Interface(ip)
            except ValueError:
                raise Fatal(f"invalid IP address '{ip}'", "use e.g. 192.168.1.10 or 192.168.1.10/24") from None
            prefix = prefix or iface.network.prefixlen
            addrs.append(str(iface.ip))
        else:
            addrs.append(str(_addr(ip, "IP address")))
    if netmask:
        try:
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask}").prefixlen
        except ValueError:
            raise Fatal(f"invalid netmask '{netmask}'", "use e.g. 255.255.255.0 or 24") from None
    if addrs and prefix is None:
        raise Fatal("static address given without a netmask", "add --netmask 255.255.255.0 or write --ip A.B.C.D/24")
    mask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask) if prefix is not None else ""
    if gateway:
        gw = _addr(gateway, "gateway")
        if addrs and gw not in ipaddress.IPv4Network(f"{addrs[0]}/{prefix}", strict=False):
            raise Fatal(f"gateway {gateway} is not in {addrs[0]}/{prefix}", "give a gateway on the VM's subnet")
    if broadcast:
        _addr(broadcast, "broadcast address")
    for ns in nameservers:
        _addr(ns, "nameserver")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,15}", bridge):
        raise Fatal(f"invalid bridge name '{bridge}'", "use an interface name of at most 15 characters")
    return Network(dhcp, tuple(addrs), mask, gateway, broadcast, tuple(nameservers), mac, bridge)


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
        f"Memory         : {plan.memory}M" + (f" (max {plan.maxmem}M)" if plan.maxmem else ""),
        f"VCPUs          : {plan.vcpus}",
        "",
        "Size Information",
        "----------------",
    ]
    for d in plan.disks:
        mp = d.mountpoint or "swap"
        lines.append(f"{d.vdev:<6} {mp:<14} {d.fs:<5} {human(d.size_mib):>6}  {d.target}")
    lines += [f"Copy           : {n}" for n in plan.notes]
    lines += ["", "Networking Information", "----------------------"]
    lines.append("IP Address     : " + ("DHCP" if net.dhcp else " ".join(net.ips) + f" / {net.netmask}"))
    if net.gateway:
        lines.append(f"Gateway        : {net.gateway}")
    lines.append(f"MAC Address    : {net.mac}  (bridge {net.bridge})")
    lines.append(f"Config         : {plan.cfg_path}")
    return "\n".join(lines)


def hook_env(plan: Plan, disk_device: str = "xvda") -> dict[str, str]:
    """The plan in xen-tools' hook environment (names and formats of xen-create-image)."""
    net = plan.net
    env = {
        "hostname": plan.hostname,
        "dhcp": "1" if net.dhcp else "0",
        "mac": net.mac,
        "bridge": net.bridge,
        "netmask": net.netmask,
        "gateway": net.gateway,
        "broadcast": net.broadcast,
        "nameserver": " ".join(net.nameservers),
        "dist": "systemimager",
        "install_method": "copy",
        "install_source": plan.image_path,
        "disk_device": disk_device,
        "serial_device": "hvc0",
        "memory": f"{plan.memory}M",
        "vcpus": str(plan.vcpus),
        "type": plan.type,
        "NUMPARTITIONS": str(len(plan.disks)),
    }
    if plan.boot != "direct":
        env["pygrub"] = "1"
    if plan.kernel:
        env["kernel"] = plan.kernel
        env["initrd"] = plan.initrd or ""
    for i, ip in enumerate(net.ips, 1):
        env[f"ip{i}"] = ip
    if net.ips:
        env["ip_count"] = str(len(net.ips))
    for d in plan.disks:
        n = d.vdev[len(disk_device):]
        kind = "phy" if plan.storage == "lvm" else "file"
        env[f"PARTITION{n}"] = ":".join(
            [d.name, f"{d.size_mib}M", d.fs, d.mountpoint, d.options if d.mountpoint else "", kind, d.target]
        )
    return env
