"""network: the VM's addressing (DHCP or static) in the guest's own format; resolv.conf; /etc/issue."""

from __future__ import annotations

import re

from si_xen.fixups.base import Ctx, fixup
from si_xen.fixups.netrender import RENDERERS


@fixup("network", 40, "setup-networking")
def network(ctx: Ctx) -> None:
    """Network config for the vif name the guest really gets (eth0, or enX0 with systemd's names).

    Written in the family's own format - ifupdown /etc/network/interfaces, netplan,
    Red Hat ifcfg, NetworkManager keyfile, SUSE ifcfg (+routes), systemd-networkd - with
    DHCP (dhcp=1) or static (ip1..ipN, netmask, gateway, broadcast); the golden client's
    interface files go. Nameservers go to etc/resolv.conf.old under xen-create-image
    (which restores it over resolv.conf afterwards), else to etc/resolv.conf.
    """
    render = RENDERERS.get(ctx.os.network)
    if render is None:
        ctx.warn(f"network: no known network configuration system in {ctx.os.pretty}; "
                 "interfaces not configured (DHCP/static settings skipped)")
    else:
        render(ctx, ctx.os.nic)
    if ctx.os.network != "ifupdown" and re.search(r"(?m)^\s*iface\s+(?!lo\b)",
                                                  ctx.guest.read_text("etc/network/interfaces") or ""):
        RENDERERS["ifupdown"](ctx, None)  # a leftover golden eth0 stanza: loopback only
    _resolv(ctx)


def _resolv(ctx: Ctx) -> None:
    s = ctx.s
    if not s.net.nameservers:
        return
    text = (f"search {s.domain}\n" if s.domain else "") + "".join(f"nameserver {n}\n" for n in s.net.nameservers)
    # a link (e.g. to systemd-resolved's stub in /run) is replaced, never written through
    ctx.write("etc/resolv.conf.old" if ctx.xen_tools else "etc/resolv.conf", text, replace_link=True)


ISSUE_PREFIX = "IPv4 address of "


@fixup("issue", 96, "issue-address")
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
