"""network: the VM's addressing (DHCP or static) for the guest's own stack; resolv.conf; /etc/issue."""

from __future__ import annotations

import re

from si_xen.distros.stacks import claims, enabling_links, installed
from si_xen.distros.table import NETPLAN_BACKENDS, STACKS
from si_xen.fixups import aside
from si_xen.fixups.base import Ctx, fixup
from si_xen.fixups.netrender import RENDERERS


@fixup("network", 40, "setup-networking", watches=(  # every stack's configs, not only the one chosen
    "etc/network/interfaces", "etc/network/interfaces.d/*", "etc/NetworkManager/system-connections/*",
    "etc/systemd/network/*.{network,netdev,link}", "etc/netplan/*.yaml",
    "etc/sysconfig/network-scripts/{ifcfg,route,route6}-*", "etc/sysconfig/network/{ifcfg-*,ifroute-*,routes}",
    "var/lib/wicked/*", *(p for st in STACKS.values() for p in st.installed),
    "etc/systemd/system/**", "etc/rc*.d/*", "etc/resolv.conf"))
def network(ctx: Ctx) -> None:
    """The VM's addressing for the one network stack the guest runs, on the vif's real name.

    The stack is the one the guest runs: netplan (with its renderer) when it has a config;
    else the stack whose unit (or rc script) is enabled - NetworkManager, systemd-networkd,
    wicked/SUSE ifcfg, Red Hat ifcfg, ifupdown - preferring one with a config for a NIC; else
    the release's default. It gets a config for the vif (eth0, or enX0 with systemd >= 250)
    in its own format, with DHCP (dhcp=1) or static (ip1..ipN, netmask, gateway, broadcast).
    Every golden config naming a NIC - of that stack and of every other (NetworkManager also
    reads ifupdown's and ifcfg files) - is kept aside under /var/lib/si-xen/golden/ at its own
    path, and the other stacks' enablement links are removed; both are listed in
    /var/lib/si-xen/golden/MANIFEST so a capture of the VM can restore them.
    Nameservers go to etc/resolv.conf.old under xen-create-image (which restores it over
    resolv.conf afterwards), else to etc/resolv.conf.
    """
    chosen = ctx.os.network
    kept_ifaces = False
    for stack in STACKS:
        for path in claims(ctx.guest, stack):
            ifaces = path == "etc/network/interfaces"  # rewritten below, never left absent
            aside.keep(ctx, path, move=not ifaces)
            kept_ifaces |= ifaces
    render = RENDERERS.get(chosen)
    if render is None:
        ctx.warn(f"network: no known network configuration system in {ctx.os.pretty}; "
                 "interfaces not configured (DHCP/static settings skipped)")
    else:
        render(ctx, ctx.os.nic)
    if chosen != "ifupdown" and kept_ifaces:
        RENDERERS["ifupdown"](ctx, None)  # loopback only: NM's ifupdown plugin would leave a listed NIC alone
    _disable_others(ctx, {chosen, NETPLAN_BACKENDS.get(ctx.os.backend, "")})
    _resolv(ctx)


def _disable_others(ctx: Ctx, running: set[str]) -> None:
    g, init = ctx.guest, ctx.os.init
    ours = {p for s in running if s in STACKS for p in enabling_links(g, s, init)}
    for stack in STACKS:
        if stack not in running and installed(g, stack):
            for link in enabling_links(g, stack, init):
                if link not in ours:
                    aside.disable(ctx, link)


def _resolv(ctx: Ctx) -> None:
    s = ctx.s
    if not s.net.nameservers:
        return
    text = (f"search {s.domain}\n" if s.domain else "") + "".join(f"nameserver {n}\n" for n in s.net.nameservers)
    # a link (e.g. to systemd-resolved's stub in /run) is replaced, never written through
    ctx.write("etc/resolv.conf.old" if ctx.xen_tools else "etc/resolv.conf", text, replace_link=True)


ISSUE_PREFIX = "IPv4 address of "


@fixup("issue", 96, "issue-address", watches=("etc/issue",))
def issue(ctx: Ctx) -> None:
    """Show the VM's IPv4 address on the console login banner (/etc/issue).

    Static: the configured address; DHCP on systemd guests: agetty's \\4{NIC} escape.
    """
    if not ctx.guest.isfile("etc/issue"):
        return
    net, nic = ctx.s.net, ctx.os.nic
    if net.static:
        line = f"{ISSUE_PREFIX}{nic}: {net.ips[0]}"
    elif ctx.os.init == "systemd":
        line = f"{ISSUE_PREFIX}{nic}: \\4{{{nic}}}"
    else:
        line = None

    def fix(text: str) -> str:
        body = re.sub(rf"(?m)^{re.escape(ISSUE_PREFIX)}.*\n?", "", text).rstrip("\n")
        return body + "\n" + (f"{line}\n" if line else "") + "\n"

    ctx.edit("etc/issue", fix)
