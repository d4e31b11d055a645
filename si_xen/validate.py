"""One check per VM setting, shared by the planner (CLI options) and the xen-tools hook
environment parser, so that both accept the same values and refuse them in the same words.

Each check takes the value and where it came from (a :class:`Source` label such as
``--netmask`` or ``environment variable netmask``) and raises :class:`Fatal` naming both.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import Fatal
from .plan import Network

_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}")
_BRIDGE = re.compile(r"[A-Za-z0-9_.-]{1,15}")


@dataclass(frozen=True)
class Source:
    """How an input names a setting: CLI options (a repeated --ip) or xen-tools' variables (ip1..ipN)."""

    prefix: str
    where: str
    numbered: bool

    def name(self, field: str, n: int = 1) -> str:
        return self.prefix + field + (str(n) if self.numbered and field == "ip" else "")

    def label(self, field: str, n: int = 1) -> str:
        return self.where + self.name(field, n)


CLI = Source("--", "", numbered=False)
ENV = Source("", "environment variable ", numbered=True)


def _invalid(what: str, value: str, where: str, fix: str) -> Fatal:
    return Fatal(f"invalid {what} '{value}' in {where}", fix)


def check_hostname(name: str, where: str = "--hostname") -> str:
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise _invalid("hostname", name, where,
                       "use letters, digits and '-' (RFC 1123), labels of at most 63 characters")
    return name


def check_mac(mac: str, where: str = "--mac") -> str:
    if not _MAC.fullmatch(mac):
        raise _invalid("MAC address", mac, where, "use six hex pairs, e.g. 00:16:3e:12:34:56")
    if int(mac[:2], 16) & 1:
        raise Fatal(f"MAC address '{mac}' in {where} is a multicast address",
                    "the first byte must be even, e.g. 00:16:3e:..")
    return mac.lower()


def check_ipv4(text: str, what: str, where: str) -> str:
    """A dotted IPv4 address (``what``: gateway, broadcast address, nameserver...)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise _invalid(what, text, where, "use a dotted IPv4 address, e.g. 192.168.1.10") from None


def check_gateway(text: str, where: str = "--gateway") -> str:
    return check_ipv4(text, "gateway", where)


def check_broadcast(text: str, where: str = "--broadcast") -> str:
    return check_ipv4(text, "broadcast address", where)


def _prefix(text: str) -> int:
    """Prefix length of ``24``, ``/24`` or a contiguous dotted mask; ValueError otherwise."""
    text = text.removeprefix("/")
    if text.isdigit():
        n = int(text)
    else:  # IPv4Network would also take a host mask (0.0.0.255): only a real netmask is one
        n = ipaddress.IPv4Network(f"0.0.0.0/{text}").prefixlen
        if str(ipaddress.IPv4Network(f"0.0.0.0/{n}").netmask) != text:
            raise ValueError(text)
    if not 1 <= n <= 32:
        raise ValueError(text)
    return n


def check_netmask(text: str, where: str = "--netmask") -> int:
    """The prefix length of a netmask given as 255.255.255.0, 24 or /24."""
    try:
        return _prefix(text)
    except ValueError:
        raise _invalid("netmask", text, where, "use e.g. 255.255.255.0 or 24") from None


def check_address(text: str, where: str = "--ip") -> tuple[str, int | None]:
    """An IPv4 address with an optional /prefix: (address, prefix length or None)."""
    ip, slash, mask = text.partition("/")
    try:
        return str(ipaddress.IPv4Address(ip)), _prefix(mask) if slash else None
    except ValueError:
        raise _invalid("IP address", text, where, "use e.g. 192.168.1.10 or 192.168.1.10/24") from None


def check_nameservers(value: str | Iterable[str], where: str = "--nameserver") -> tuple[str, ...]:
    """Nameserver addresses, as a list or as text separated by spaces or commas."""
    names = value.replace(",", " ").split() if isinstance(value, str) else value
    return tuple(check_ipv4(ns, "nameserver", where) for ns in names)


def check_bridge(name: str, where: str = "--bridge") -> str:
    if not _BRIDGE.fullmatch(name):
        raise _invalid("bridge name", name, where, "use an interface name of at most 15 characters")
    return name


def check_network(dhcp: bool, ips, netmask: str, gateway: str, broadcast: str, nameservers, mac: str,
                  bridge: str, src: Source = CLI) -> Network:
    """Every network setting, then how they fit together (one way to be configured, one subnet)."""
    name, label = src.name, src.label
    if dhcp and ips:
        raise Fatal(f"both {name('dhcp')} and {name('ip')} given", "choose DHCP or static addresses, not both")
    if not dhcp and not ips:
        raise Fatal("no network configuration given",
                    f"use {name('dhcp')}, or {name('ip')} with {name('netmask')} and {name('gateway')}")
    addrs, prefix = [], None
    for n, ip in enumerate(ips, 1):
        addr, pfx = check_address(ip, label("ip", n))
        addrs.append(addr)
        prefix = prefix or pfx  # the first /N, unless a netmask is given
    if netmask:
        prefix = check_netmask(netmask, label("netmask"))
    if addrs and prefix is None:
        raise Fatal("static address given without a netmask",
                    f"set {name('netmask')} (e.g. 255.255.255.0) or write {name('ip')} as A.B.C.D/24")
    mask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask) if prefix is not None else ""
    if gateway:
        gw = ipaddress.IPv4Address(check_gateway(gateway, label("gateway")))
        if addrs and gw not in ipaddress.IPv4Network(f"{addrs[0]}/{prefix}", strict=False):
            raise Fatal(f"gateway {gateway} is not in {addrs[0]}/{prefix}", "give a gateway on the VM's subnet")
    return Network(
        dhcp, tuple(addrs), mask, gateway,
        check_broadcast(broadcast, label("broadcast")) if broadcast else "",
        check_nameservers(nameservers, label("nameserver")),
        check_mac(mac, label("mac")) if mac else "",
        check_bridge(bridge, label("bridge")),
    )
