"""MAC-bound network state: a VM has a new MAC, so every binding to the old one must go.

Left in place, udev renames the vif to eth1 and the eth0 config never applies.
"""

from __future__ import annotations

import re

from si_xen.fixups.base import Ctx, fixup

# the three historic names of udev's persistent-net rules, plus SUSE 10.x's own
PERSISTENT_NET = ("70-persistent-net.rules", "z25_persistent-net.rules", "30-net_persistent_names.rules")
IFCFG_DIRS = ("etc/sysconfig/network-scripts", "etc/sysconfig/network")
NM_DIR = "etc/NetworkManager/system-connections"
SUSE_ID_MAC = re.compile(r"^ifcfg-eth-id-([0-9a-f]{2}:){5}[0-9a-f]{2}$", re.I)


def drop_ini_key(text: str, sections: tuple[str, ...], key: str, replace: str | None = None) -> str:
    """Remove (or replace) ``key=`` lines inside the given [sections] of an INI-style file."""
    out, cur = [], None
    for line in text.split("\n"):
        m = re.match(r"^\s*\[([^\]]+)\]", line)
        if m:
            cur = m.group(1).strip()
        elif cur in sections and re.match(rf"^\s*{re.escape(key)}\s*=", line, re.I):
            if replace is not None:
                out.append(replace)
            continue
        out.append(line)
    return "\n".join(out)


def drop_netplan_match(text: str) -> str:
    """Remove ``match: {macaddress: ..}`` blocks (and the set-name they enable) from netplan YAML."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)match:\s*$", line)
        if m:
            ind = len(m.group(1))
            j = i + 1
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > ind):
                block.append(lines[j])
                j += 1
            rest = [b for b in block if b.strip() and not re.match(r"^\s*macaddress:", b)]
            if len(rest) != len([b for b in block if b.strip()]):
                if rest:
                    out.extend([line] + rest)
                i = j
                continue
        if re.match(r"^\s*macaddress:\s*\S+", line) or re.match(r"^\s*match:\s*\{\s*macaddress:.*\}\s*$", line):
            i += 1
            continue
        out.append(line)
        i += 1
    text2 = "\n".join(out)
    if text2 != text:  # set-name only works with a match: it would fail without one
        text2 = re.sub(r"(?m)^\s*set-name:.*\n", "", text2)
    return text2


@fixup("macs", 35, "forget-macs")
def forget_macs(ctx: Ctx) -> None:
    """Remove state bound to the golden client's MAC addresses.

    udev persistent-net rules (70-persistent-net.rules, z25_persistent-net.rules,
    30-net_persistent_names.rules); HWADDR=/MACADDR= in ifcfg files; LLADDR= and the
    ifcfg-eth-id-MAC files of SUSE; NetworkManager mac-address=; netplan match:
    macaddress (and its set-name); systemd .link files matching a MACAddress=.
    """
    g = ctx.guest
    for name in PERSISTENT_NET:
        ctx.remove(f"etc/udev/rules.d/{name}")
    for d in IFCFG_DIRS:
        for path in g.glob(d, "ifcfg-*"):
            if SUSE_ID_MAC.match(path.rsplit("/", 1)[1]):
                ctx.remove(path)
            else:
                ctx.edit(path, lambda t: re.sub(r"(?m)^\s*(HWADDR|MACADDR|LLADDR)=.*\n?", "", t))
    for path in g.glob(NM_DIR, "*"):
        ctx.edit(path, lambda t: drop_ini_key(t, ("ethernet", "802-3-ethernet"), "mac-address"))
    for path in g.glob("etc/netplan", "*.yaml"):
        ctx.edit(path, drop_netplan_match)
    for path in g.glob("etc/systemd/network", "*.link"):
        if re.search(r"(?m)^\s*MACAddress\s*=", g.read_text(path) or ""):
            ctx.remove(path)
    for path in g.glob("etc/systemd/network", "*.network"):
        ctx.edit(path, lambda t: drop_ini_key(t, ("Match",), "MACAddress", f"Name={ctx.os.nic}"))
