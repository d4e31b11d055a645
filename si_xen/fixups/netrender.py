"""Network config in each family's own format, for the vif name the guest really gets.

One renderer per format (OSInfo.network picks it). Each writes its own file(s); the golden
client's configs are already kept aside by the network fixup (fixups/aside.py), so neither its
address nor its gateway survives.
"""

from __future__ import annotations

import re
import uuid

from si_xen.distros.stacks import OURS
from si_xen.fixups import aside
from si_xen.fixups.base import Ctx

HEADER = f"{OURS} for this Xen VM (the golden client's settings are in /{aside.GOLDEN}).\n"


def _cidr(ctx: Ctx, ip: str) -> str:
    return f"{ip}/{ctx.s.net.prefixlen}"


def ifupdown(ctx: Ctx, nic: str | None) -> None:
    """/etc/network/interfaces; with ``nic`` None only loopback (another renderer owns the vif)."""
    s, g = ctx.s.net, ctx.guest
    old = g.read_text("etc/network/interfaces") or ""
    sources = [ln for ln in old.splitlines() if re.match(r"^\s*source(-directory)?\s", ln)]
    out = [HEADER.rstrip(), *sources, "", "auto lo", "iface lo inet loopback", ""]
    if nic is None:
        pass
    elif s.dhcp:
        out += [f"auto {nic}", f"iface {nic} inet dhcp"]
    else:
        for n, ip in enumerate(s.ips):
            name = nic if n == 0 else f"{nic}:{n}"
            out += [f"auto {name}", f"iface {name} inet static", f"    address {ip}", f"    netmask {s.netmask}"]
            if n == 0:
                out += [f"    {k} {v}" for k, v in (("gateway", s.gateway), ("broadcast", s.broadcast)) if v]
                if s.nameservers:  # read by resolvconf when installed, ignored otherwise
                    out.append(f"    dns-nameservers {' '.join(s.nameservers)}")
            out.append("")
    ctx.write("etc/network/interfaces", "\n".join(out).rstrip("\n") + "\n")


def netplan(ctx: Ctx, nic: str) -> None:
    s, g = ctx.s.net, ctx.guest
    ours = "etc/netplan/01-netcfg.yaml"
    renderer = ctx.os.backend or (
        "NetworkManager" if not _has_networkd(ctx) and g.exists("usr/sbin/NetworkManager") else "networkd")
    y = [HEADER.rstrip(), "network:", "  version: 2", f"  renderer: {renderer}", "  ethernets:", f"    {nic}:"]
    if s.dhcp:
        y.append("      dhcp4: true")
    else:
        y.append(f"      addresses: [{', '.join(_cidr(ctx, ip) for ip in s.ips)}]")
        if s.gateway:
            y += ["      routes:", "        - to: 0.0.0.0/0", f"          via: {s.gateway}"]
    if s.nameservers:
        y += ["      nameservers:", f"        addresses: [{', '.join(s.nameservers)}]"]
        if ctx.s.domain:
            y.append(f"        search: [{ctx.s.domain}]")
    ctx.write(ours, "\n".join(y) + "\n", mode=0o600)


def _has_networkd(ctx: Ctx) -> bool:
    return any(ctx.guest.exists(f"{d}/systemd/systemd-networkd") for d in ("lib", "usr/lib"))


def _kv(pairs) -> str:
    return "".join(f"{k}={v}\n" for k, v in pairs if v != "")


def ifcfg(ctx: Ctx, nic: str) -> None:
    s, d = ctx.s.net, "etc/sysconfig/network-scripts"
    base = [("DEVICE", nic), ("TYPE", "Ethernet"), ("ONBOOT", "yes"), ("NM_CONTROLLED", "")]
    if s.dhcp:
        ctx.write(f"{d}/ifcfg-{nic}", HEADER + _kv(base + [("BOOTPROTO", "dhcp")]))
    else:
        dns = [(f"DNS{i + 1}", ns) for i, ns in enumerate(s.nameservers)]
        ctx.write(f"{d}/ifcfg-{nic}", HEADER + _kv(base + [
            ("BOOTPROTO", "none"), ("IPADDR", s.ips[0]), ("NETMASK", s.netmask),
            ("GATEWAY", s.gateway), ("BROADCAST", s.broadcast), *dns, ("DOMAIN", ctx.s.domain)]))
        for n, ip in enumerate(s.ips[1:], 1):
            ctx.write(f"{d}/ifcfg-{nic}:{n}", HEADER + _kv([("DEVICE", f"{nic}:{n}"), ("ONBOOT", "yes"),
                                                           ("BOOTPROTO", "none"), ("IPADDR", ip),
                                                           ("NETMASK", s.netmask)]))
    _sysconfig_network(ctx)


def _sysconfig_network(ctx: Ctx) -> None:
    """etc/sysconfig/network: NETWORKING=yes, GATEWAY= the VM's (or none)."""
    if ctx.guest.isdir("etc/sysconfig/network") or not ctx.guest.isdir("etc/sysconfig"):
        return  # SUSE: a directory, handled by suse_ifcfg; Debian's NetworkManager: no sysconfig

    net = ctx.s.net
    gw = f"GATEWAY={net.gateway}" if net.static and net.gateway else None

    def fix(text: str) -> str:
        if not re.search(r"(?m)^NETWORKING=", text):
            text = "NETWORKING=yes\n" + text
        text = re.sub(r"(?m)^GATEWAYDEV=.*\n?", "", text)
        if gw and re.search(r"(?m)^GATEWAY=", text):
            return re.sub(r"(?m)^GATEWAY=.*$", gw, text)
        text = re.sub(r"(?m)^GATEWAY=.*\n?", "", text)
        return text + ("" if text.endswith("\n") or not text else "\n") + f"{gw}\n" if gw else text

    if not ctx.guest.exists("etc/sysconfig/network"):
        ctx.write("etc/sysconfig/network", fix(""))
    else:  # it names the golden gateway (and GATEWAYDEV its NIC): the original is kept
        aside.edit(ctx, "etc/sysconfig/network", fix)


def nm_keyfile(ctx: Ctx, nic: str) -> None:
    s, d = ctx.s.net, "etc/NetworkManager/system-connections"
    ours = f"{d}/si-xen-{nic}.nmconnection"
    ini = ["[connection]", f"id={nic}", f"uuid={uuid.uuid5(uuid.NAMESPACE_DNS, f'si-xen.{nic}')}",
           "type=ethernet", f"interface-name={nic}", "autoconnect=true", "", "[ethernet]", "", "[ipv4]"]
    if s.dhcp:
        ini.append("method=auto")
    else:
        ini.append("method=manual")
        for n, ip in enumerate(s.ips, 1):
            ini.append(f"address{n}={_cidr(ctx, ip)}" + (f",{s.gateway}" if n == 1 and s.gateway else ""))
    if s.nameservers:
        ini.append(f"dns={';'.join(s.nameservers)};")
    if ctx.s.domain:
        ini.append(f"dns-search={ctx.s.domain};")
    ini += ["", "[ipv6]", "method=auto", ""]
    ctx.write(ours, HEADER + "\n".join(ini), mode=0o600)
    _sysconfig_network(ctx)


def suse_ifcfg(ctx: Ctx, nic: str) -> None:
    s, d = ctx.s.net, "etc/sysconfig/network"
    if s.dhcp:
        text = _kv([("BOOTPROTO", "'dhcp'"), ("STARTMODE", "'auto'")])
    else:
        addrs = [("IPADDR", f"'{_cidr(ctx, s.ips[0])}'")] + [
            (f"IPADDR_{n}", f"'{_cidr(ctx, ip)}'") for n, ip in enumerate(s.ips[1:], 1)]
        text = _kv([("BOOTPROTO", "'static'"), ("STARTMODE", "'auto'"), *addrs,
                    ("BROADCAST", f"'{s.broadcast}'" if s.broadcast else "")])
    ctx.write(f"{d}/ifcfg-{nic}", HEADER + text)
    if s.static and s.gateway:  # the golden routes were kept aside
        ctx.write(f"{d}/routes", HEADER + f"default {s.gateway} - -\n")
    if s.nameservers:
        ctx.edit(f"{d}/config", lambda t: re.sub(r'(?m)^NETCONFIG_DNS_STATIC_SERVERS=.*$',
                                                  f'NETCONFIG_DNS_STATIC_SERVERS="{" ".join(s.nameservers)}"', t))


def networkd(ctx: Ctx, nic: str) -> None:
    s, g, d = ctx.s.net, ctx.guest, "etc/systemd/network"
    ours = f"{d}/10-si-xen-{nic}.network"
    net = ["[Match]", f"Name={nic}", "", "[Network]"]
    if s.dhcp:
        net.append("DHCP=ipv4")
    else:
        net += [f"Address={_cidr(ctx, ip)}" for ip in s.ips] + ([f"Gateway={s.gateway}"] if s.gateway else [])
    net += [f"DNS={ns}" for ns in s.nameservers] + ([f"Domains={ctx.s.domain}"] if ctx.s.domain else [])
    ctx.write(ours, HEADER + "\n".join(net) + "\n")
    if not g.exists("etc/systemd/system/multi-user.target.wants/systemd-networkd.service"):
        unit = next((f"/{x}/systemd/system/systemd-networkd.service" for x in ("lib", "usr/lib")
                     if g.exists(f"{x}/systemd/system/systemd-networkd.service")), None)
        if unit:
            ctx.link(unit, "etc/systemd/system/multi-user.target.wants/systemd-networkd.service")


RENDERERS = {"ifupdown": ifupdown, "netplan": netplan, "ifcfg": ifcfg, "nm-keyfile": nm_keyfile,
             "suse-ifcfg": suse_ifcfg, "networkd": networkd}
