"""Which network stack a guest runs, from what the tree shows: enabled units, installed daemons,
netplan's renderer; the release's default only when nothing is enabled (table.STACKS is the data).

Links are read, never followed out of the guest: an enablement link's target is only a name.
"""

from __future__ import annotations

import os
import re

from si_xen.distros.table import NETPLAN_BACKENDS, STACKS
from si_xen.guestfs import Guest

OURS = "# Written by si-xen"  # the first line of every network file si-xen writes: never golden
UNIT_DIRS = ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system")
RC_DIRS = tuple(f"etc/rc{r}.d" for r in "0123456S") + tuple(f"etc/rc.d/rc{r}.d" for r in "0123456") \
    + tuple(f"etc/init.d/rc{r}.d" for r in "0123456S")
NM_DIR = "etc/NetworkManager/system-connections"
# NM connection types bound to a NIC (not wifi, vpn, loopback...)
NM_NIC = re.compile(r"(?m)^\s*type\s*=\s*(ethernet|802-3-ethernet|bond|bridge|vlan|team|infiniband)\s*$")


def installed(guest: Guest, stack: str) -> bool:
    return any(guest.exists(p) for p in STACKS[stack].installed)


def _ours(guest: Guest, path: str) -> bool:
    return (guest.read_text(path, "") or "").startswith(OURS)


def _unit_links(guest: Guest) -> list[tuple[str, str]]:
    """(guest path, unit it enables) of every enablement link and alias under etc/systemd/system."""
    out = []
    base = "etc/systemd/system"
    dirs = [base] + [f"{base}/{d}" for d in guest.listdir(base) if d.endswith((".wants", ".requires"))]
    for d in dirs:
        for name in guest.listdir(d):
            path = f"{d}/{name}"
            if guest.islink(path):
                target = guest.readlink(path)
                if target != "/dev/null":
                    out.append((path, os.path.basename(target) if "." in os.path.basename(target) else name))
    return out


def _masked(guest: Guest, unit: str) -> bool:
    path = f"etc/systemd/system/{unit}"
    return guest.islink(path) and guest.readlink(path) == "/dev/null"


def _rc_links(guest: Guest, script: str, init: str) -> list[str]:
    """S-links starting ``script``; on systemd guests only if it has no native unit (systemd
    ignores rc links then)."""
    if init == "systemd" and any(guest.exists(f"{d}/{script}.service") for d in UNIT_DIRS):
        return []
    pat = re.compile(rf"^S\d*{re.escape(script)}$")
    return [f"{d}/{n}" for d in RC_DIRS for n in guest.listdir(d) if pat.match(n) and guest.islink(f"{d}/{n}")]


def enabling_links(guest: Guest, stack: str, init: str) -> list[str]:
    """Guest paths of the links that start ``stack`` at boot (empty: not enabled)."""
    st = STACKS[stack]
    links = [p for p, unit in _unit_links(guest) if unit in st.units]
    links += [p for s in st.sysv for p in _rc_links(guest, s, init)]
    return sorted(set(links))


def enabled(guest: Guest, stack: str, init: str) -> bool:
    """Installed, its daemon's unit not masked, and started at boot: by a link to that unit, or by
    an rc S-link of its init script."""
    st = STACKS[stack]
    if not installed(guest, stack) or (st.units and _masked(guest, st.units[0])):
        return False
    return bool(st.units) and any(unit == st.units[0] for _, unit in _unit_links(guest)) or \
        any(_rc_links(guest, s, init) for s in st.sysv)


def _ifupdown_claims(text: str) -> bool:
    return bool(re.search(r"(?m)^\s*(iface|auto|allow-[\w-]+|mapping)\s+(?!lo\s*$)(?!lo\s+inet)\S+", text))


def claims(guest: Guest, stack: str, golden: bool = True) -> list[str]:
    """The config files of ``stack`` that name a NIC (or its address); if ``golden``, si-xen's
    own files excepted."""
    g, out = guest, []
    if stack == "ifupdown":
        out = [p for p in ["etc/network/interfaces"] + g.glob("etc/network/interfaces.d", "*")
               if g.isfile(p) and _ifupdown_claims(g.read_text(p, "") or "")]
    elif stack == "nm-keyfile":
        out = [p for p in g.glob(NM_DIR, "*") if NM_NIC.search(g.read_text(p, "") or "")]
    elif stack == "networkd":
        out = [p for p in g.glob("etc/systemd/network", "*.network")
               if not re.search(r"(?m)^\s*Name\s*=\s*lo\s*$", g.read_text(p, "") or "")]
        out += g.glob("etc/systemd/network", "*.netdev")
    elif stack == "netplan":
        out = [p for p in g.glob("etc/netplan", "*.yaml")
               if re.search(r"(?m)^\s*(ethernets|bonds|bridges|vlans|wifis):", g.read_text(p, "") or "")]
    elif stack in ("ifcfg", "suse-ifcfg"):
        d = "etc/sysconfig/network-scripts" if stack == "ifcfg" else "etc/sysconfig/network"
        if g.isdir(d):
            out = [p for pat in ("ifcfg-*", "route-*", "route6-*", "ifroute-*") for p in g.glob(d, pat)
                   if not p.endswith(("-lo", ".bak", "~"))]
            if stack == "suse-ifcfg" and re.search(r"(?m)^\s*[^#\s]", g.read_text(f"{d}/routes", "") or ""):
                out.append(f"{d}/routes")
    return [p for p in out if not (golden and _ours(g, p))]


def netplan_renderer(guest: Guest) -> str | None:
    """The `renderer:` the guest's netplan files give (the last file's wins, as netplan merges)."""
    found = None
    for path in guest.glob("etc/netplan", "*.yaml"):
        for m in re.finditer(r"(?m)^\s*renderer:\s*['\"]?(\w+)", guest.read_text(path, "") or ""):
            found = m.group(1) if m.group(1) in NETPLAN_BACKENDS else found
    return found


def decide(guest: Guest, init: str, default: str, fallbacks: tuple[str, ...]) -> tuple[str, str]:
    """(stack, netplan's backend or "") the guest runs.

    netplan when installed with a config for a NIC; else the enabled stack that has a config for
    a NIC (ties: table order), else any enabled one; else the release's ``default`` if installed,
    else the first installed of ``fallbacks``, else ``default`` (the release's own format).
    """
    # si-xen's own files count: a second run must decide as the first did
    if installed(guest, "netplan") and claims(guest, "netplan", golden=False):
        return "netplan", _backend(guest)
    on = [s for s in STACKS if s != "netplan" and enabled(guest, s, init)]
    with_conf = [s for s in on if claims(guest, s, golden=False)]
    if with_conf or on:
        return (with_conf or on)[0], ""
    for s in (default, *fallbacks):
        if s in STACKS and installed(guest, s):
            return s, _backend(guest) if s == "netplan" else ""
    return default, _backend(guest) if default == "netplan" else ""


def _backend(guest: Guest) -> str:
    r = netplan_renderer(guest)
    if r:
        return r
    if not installed(guest, "networkd") and installed(guest, "nm-keyfile"):
        return "NetworkManager"
    return "networkd"
