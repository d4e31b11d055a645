"""The xen-tools hook environment (reference xen-tools.md §1.4), parsed and validated once.

Names are xen-tools' own. Optional variables may be missing (xen-create-image exports only
what is defined); bad values raise :class:`Fatal` naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from si_xen.errors import Fatal

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


@dataclass(frozen=True)
class Partition:
    index: int  # N of PARTITIONN = N of /dev/xvdaN
    name: str
    size: str
    fstype: str
    mountpoint: str
    options: str


@dataclass(frozen=True)
class Settings:
    hostname: str  # as given (maybe FQDN); "" = leave the guest's name alone
    dhcp: bool
    ips: tuple[str, ...]
    netmask: str  # dotted quad ("" if none)
    prefixlen: int
    gateway: str
    broadcast: str
    nameservers: tuple[str, ...]
    mac: str
    disk: str  # xvda / hda / sda
    serial: str  # hvc0
    partitions: tuple[Partition, ...]
    image_name: str
    pygrub: bool
    kernel: str
    modules: str
    env: Mapping[str, str]

    @property
    def short(self) -> str:
        return self.hostname.split(".")[0]

    @property
    def domain(self) -> str:
        return self.hostname.partition(".")[2]

    @property
    def static(self) -> bool:
        return not self.dhcp

    @property
    def root_partition(self) -> Partition | None:
        return next((p for p in self.partitions if p.mountpoint == "/"), None)

    def dev(self, part: Partition) -> str:
        return f"/dev/{self.disk}{part.index}"


def _bad(var: str, value: str, fix: str) -> Fatal:
    return Fatal(f"bad value {var}={value!r}", fix)


def _ip(var: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise _bad(var, value, "expected a dotted IPv4 address") from None


def _partitions(env: Mapping[str, str]) -> tuple[Partition, ...]:
    raw = env.get("NUMPARTITIONS", "").strip()
    if not raw:
        return ()
    if not raw.isdigit():
        raise _bad("NUMPARTITIONS", raw, "expected a count")
    out = []
    for n in range(1, int(raw) + 1):
        spec = env.get(f"PARTITION{n}", "")
        fields = spec.split(":", 6)
        if len(fields) < 4:
            raise _bad(f"PARTITION{n}", spec, "expected name:size:type:mountpoint:options:imagetype:image")
        name, size, fstype, mnt = fields[:4]
        opts = fields[4] if len(fields) > 4 else ""
        if fstype != "swap" and not mnt.startswith("/") or re.search(r"\s", mnt + opts + fstype):
            raise _bad(f"PARTITION{n}", spec, "a non-swap partition needs an absolute mountpoint, no spaces")
        out.append(Partition(n, name, size, fstype, mnt, opts or "defaults"))
    return tuple(out)


def from_env(env: Mapping[str, str]) -> Settings:
    """Validate xen-tools' hook environment; raise Fatal on a bad value."""
    g = {k: v.strip() for k, v in env.items() if isinstance(v, str)}.get
    hostname = g("hostname", "") or ""
    if hostname and not all(_LABEL.match(x) for x in hostname.split(".")):
        raise _bad("hostname", hostname, "use letters, digits and '-' in dot-separated labels")

    dhcp_raw = g("dhcp", "") or ""
    if dhcp_raw not in ("", "0", "1"):
        raise _bad("dhcp", dhcp_raw, "use 1 for DHCP, 0 for static")
    count = g("ip_count", "") or ""
    n = int(count) if count.isdigit() else 0
    names = [f"ip{i}" for i in range(1, max(n, 1) + 1)]
    if not count:  # tolerate a missing ip_count: take ip1.. while present
        i = 2
        while g(f"ip{i}"):
            names.append(f"ip{i}")
            i += 1
    ips = tuple(_ip(k, g(k)) for k in names if g(k))
    dhcp = dhcp_raw == "1" or (dhcp_raw == "" and not ips)
    if not dhcp and not ips:
        raise Fatal("dhcp=0 but no ip1 set", "give an address (--ip) or use DHCP (--dhcp)")

    netmask, prefixlen = "", 24
    nm = g("netmask", "") or ""
    if nm:
        try:
            net = ipaddress.IPv4Network(f"0.0.0.0/{nm.lstrip('/')}")
        except ValueError:
            raise _bad("netmask", nm, "expected e.g. 255.255.255.0 or 24") from None
        netmask, prefixlen = str(net.netmask), net.prefixlen
    elif ips:
        netmask = "255.255.255.0"
    gateway = _ip("gateway", g("gateway")) if g("gateway") else ""
    broadcast = _ip("broadcast", g("broadcast")) if g("broadcast") else ""
    ns = tuple(_ip("nameserver", x) for x in (g("nameserver", "") or "").replace(",", " ").split())

    mac = g("mac", "") or ""
    if mac and not re.fullmatch(r"(?:[0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}", mac):
        raise _bad("mac", mac, "expected six colon-separated hex bytes")
    disk = os.path.basename(g("disk_device", "") or "xvda")
    if g("ide") == "1":
        disk = "hda"
    elif g("scsi") == "1":
        disk = "sda"
    if not re.fullmatch(r"[a-z]+", disk):
        raise _bad("disk_device", disk, "expected a whole-disk name such as xvda")
    serial = g("serial_device", "") or "hvc0"
    serial = serial.removeprefix("/dev/")
    if not re.fullmatch(r"(tty|hvc|xvc)[A-Za-z]*[0-9]+", serial):
        raise _bad("serial_device", serial, "expected e.g. hvc0")
    src = (g("install_source", "") or "").rstrip("/")
    return Settings(hostname, dhcp, ips, netmask, prefixlen, gateway, broadcast, ns, mac.lower(), disk,
                    serial, _partitions(env), os.path.basename(src), g("pygrub") == "1",
                    g("kernel", "") or "", g("modules", "") or "", dict(env))
