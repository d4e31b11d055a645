"""identity: the VM's own name, and nothing of the golden client's machine identity."""

from __future__ import annotations

import os
import re
import stat
import tempfile

from si_xen import hostkeys, proc, sshdconfig
from si_xen.distros.table import RELEASES
from si_xen.errors import Fatal
from si_xen.fixups.base import Ctx, fixup
from si_xen.guestfs import Guest, GuestPathError

IPV6_HOSTS = """
# The following lines are desirable for IPv6 capable hosts
::1     localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
"""
SEEDS = ("var/lib/systemd/random-seed", "var/lib/urandom/random-seed", "var/lib/random-seed",
         "var/lib/misc/random-seed")
LEASES = (("var/lib/dhcp", "*.lease*"), ("var/lib/dhcp3", "*.lease*"), ("var/lib/dhclient", "*.lease*"),
          ("var/lib/NetworkManager", "*.lease"), ("var/lib/wicked", "lease-*"), ("var/lib/dhcpcd", "*.lease*"),
          ("var/lib/dhcpcd5", "*.lease*"), ("var/lib/dhcp", "dhclient*.leases"))


def _old_names(ctx: Ctx) -> set[str]:
    g, names = ctx.guest, set()
    for path in ("etc/hostname", "etc/HOSTNAME", "etc/mailname"):
        names.update((g.read_text(path) or "").split()[:1])
    m = re.search(r'(?m)^HOSTNAME=["\']?([^"\'\s]+)', g.read_text("etc/sysconfig/network") or "")
    if m:
        names.add(m.group(1))
    names |= {n.split(".")[0] for n in names}
    return names - {"localhost", "localhost.localdomain", ""}


def hosts(text: str | None, s, old: set[str]) -> str:
    """/etc/hosts with the golden client's names gone and the VM's line after localhost."""
    ip = s.net.ips[0] if s.net.static else "127.0.1.1"
    mine = f"{ip}\t{s.hostname} {s.short}" if s.domain else f"{ip}\t{s.short}"
    if text is None:
        return f"127.0.0.1\tlocalhost\n{mine}\n{IPV6_HOSTS}"
    gone = old | {s.hostname, s.short}
    out, at = [], None
    for line in text.split("\n"):
        body, hash_, comment = line.partition("#")
        words = body.split()
        if words and not line.lstrip().startswith("#"):
            if words[0] in ("127.0.1.1", ip):
                continue
            if any(w in gone for w in words[1:]):
                kept = [w for w in words[1:] if w not in gone]
                if not (words[0].startswith("127.") or words[0] == "::1") or not kept:
                    continue  # the golden client's own address line goes whole
                line = "\t".join([words[0], " ".join(kept)]) + (f" #{comment}" if hash_ else "")
            if words[0] == "127.0.0.1" and at is None:
                at = len(out) + 1
        out.append(line)
    out.insert(at if at is not None else 0, mine)
    return "\n".join(out)


@fixup("hostname", 50, "setup-hostname", watches=("etc/hosts", "etc/mailname", *sorted(
    {p for rows in RELEASES.values() for _, prof in rows for p, _ in prof.hostname_files})))
def hostname(ctx: Ctx) -> None:
    """The VM's hostname in every file its family reads, /etc/hosts and /etc/mailname.

    /etc/hostname (short on Debian, FQDN on Red Hat/SUSE), /etc/HOSTNAME (SUSE),
    HOSTNAME= in /etc/sysconfig/network (Red Hat); the golden client's name and address
    leave /etc/hosts, which gets the VM's line (ip1, or 127.0.1.1 with DHCP).
    """
    s, g = ctx.s, ctx.guest
    if not s.hostname:
        ctx.warn("hostname: no hostname given; the guest keeps its own")
        return
    old = _old_names(ctx)
    for i, (path, style) in enumerate(ctx.os.hostname_files):
        if style == "sysconfig":
            if g.exists(path) or i == 0:
                ctx.write(path, _sysconfig(g.read_text(path) or "NETWORKING=yes\n", s.hostname))
        else:
            ctx.write(path, (s.short if style == "short" else s.hostname) + "\n")
    ctx.write("etc/hosts", hosts(g.read_text("etc/hosts"), s, old))
    if g.exists("etc/mailname") or ctx.os.family in ("debian", "unknown"):
        ctx.write("etc/mailname", s.hostname + "\n")


def _sysconfig(text: str, name: str) -> str:
    if re.search(r"(?m)^HOSTNAME=", text):
        return re.sub(r"(?m)^HOSTNAME=.*$", f"HOSTNAME={name}", text)
    return text + ("" if text.endswith("\n") or not text else "\n") + f"HOSTNAME={name}\n"


@fixup("identity", 70, "fresh-identity", watches=("etc/ssh/sshd_config{,.d/*}",))
def identity(ctx: Ctx) -> None:
    """Fresh machine identity: SSH host keys, machine-id, random seeds, DHCP leases.

    The VM gets a new SSH host key for every key its sshd loads (the HostKey lines of
    /etc/ssh/sshd_config and its Include files, else OpenSSH's rsa, ecdsa and ed25519 keys),
    whether or not the image has them (si_getimage leaves none), and for any other
    /etc/ssh/ssh_host_*_key the image has; made by the dom0's ssh-keygen (never a guest
    binary), and a key sshd loads that cannot be made stops the deploy. /etc/machine-id is
    emptied (systemd makes a new one at first boot) and /var/lib/dbus/machine-id kept as a
    link to it; random seeds and leases are removed. An update keeps the VM's own identity
    (its keys, a machine-id it has, seeds, leases), making only the keys its sshd now loads
    that it lacks; a rebuild writes the old VM's carried keys and machine-id instead.
    """
    g, s = ctx.guest, ctx.s
    carried = _carry_in(ctx) if s.identity_dir else set()
    _ssh_keys(ctx, carried)
    if s.keep_identity:
        return  # an update: the VM's own machine-id, seeds and leases stay
    dbus = "var/lib/dbus/machine-id"
    if g.exists("etc/machine-id"):
        if "etc/machine-id" not in carried:
            ctx.write("etc/machine-id", "", mode=0o444)
        if dbus not in carried and (g.exists(dbus) or g.isdir("var/lib/dbus")):
            ctx.link("/etc/machine-id", dbus)
    elif dbus not in carried:  # pre-systemd dbus: dbus-uuidgen --ensure recreates it at boot
        ctx.remove(dbus)
    for path in SEEDS:
        ctx.remove(path)
    for d, pattern in LEASES:
        for path in g.glob(d, pattern):
            ctx.remove(path)


def _carry_in(ctx: Ctx) -> set[str]:
    """Write every regular file of ``identity_dir`` (a tree laid out as the guest's: the old VM's
    etc/ssh/ssh_host_*, etc/machine-id, var/lib/dbus/machine-id) at its guest path, byte for byte
    and with its mode and numeric owner (an sshd refuses a key group-readable by another group);
    returns those guest paths."""
    top, g, done = ctx.s.identity_dir, ctx.guest, set()
    for d, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            host = os.path.join(d, name)
            st = os.lstat(host)
            if not stat.S_ISREG(st.st_mode):
                continue  # carried files only, never a link
            gpath = os.path.relpath(host, top)
            with open(host, "rb") as f:
                text = f.read().decode("utf-8", "surrogateescape")
            if g.islink(gpath):  # a link is replaced, never written through
                g.unlink(gpath)
            g.write_text(gpath, text, stat.S_IMODE(st.st_mode))
            os.chown(g.path(gpath, follow=False), st.st_uid, st.st_gid, follow_symlinks=False)
            ctx.note(f"carried /{gpath} over from the old VM")
            done.add(gpath)
    return done


def _ssh_keys(ctx: Ctx, carried: set[str] = frozenset()) -> None:
    g, s = ctx.guest, ctx.s
    tag = hostkeys.tag(s.hostname)
    if g.exists("etc/ssh/ssh_host_key") and not s.keep_identity:  # SSH-1 rsa1: no modern ssh-keygen makes one; sshd's init does
        ctx.remove("etc/ssh/ssh_host_key")
        ctx.remove("etc/ssh/ssh_host_key.pub")
    image = Guest(s.image_source) if s.image_source and os.path.isdir(s.image_source) else None
    try:
        for key in sshdconfig.vm_keys(g):
            if key.path.lstrip("/") in carried or s.keep_identity and g.isfile(key.path):
                continue  # the VM's own key
            if s.keep_identity and not key.loaded:
                continue  # an update makes only the keys sshd loads
            pub = (g.read_text(key.path + ".pub") or "").strip().split(None, 2)
            cloned = image is not None and (image.read_text(key.path + ".pub") or "").split()[:2] == pub[:2]
            if pub[2:] == [tag] and not cloned and g.isfile(key.path):
                continue  # made for this VM already (the fixup run again)
            _keygen(ctx, key, tag)
    except GuestPathError as e:  # the runner would only warn: a VM without its keys is not handed over
        raise Fatal(f"cannot make the VM's SSH host keys: {e.gpath}: {e.reason}",
                    "fix or remove it in the image") from None


def _keygen(ctx: Ctx, key: sshdconfig.HostKey, tag: str) -> None:
    priv, ktype = key.path, key.type
    ready = hostkeys.take(ktype, tag, ctx.s.hostkeys)  # made by si_mkxenvm while it copied the image
    if ready is None:
        ready = _make(ctx, key, tag)
        if ready is None:
            return
    for path, text, mode in ((priv, ready[0], 0o600), (priv + ".pub", ready[1], 0o644)):
        if ctx.guest.islink(path):  # a link is replaced, never written through
            ctx.guest.unlink(path)
        ctx.guest.write_text(path, text, mode=mode)
    ctx.note(f"new {ktype} SSH host key {priv}")


def _make(ctx: Ctx, key: sshdconfig.HostKey, tag: str) -> tuple[str, str] | None:
    """A key pair from the dom0's ssh-keygen; one sshd loads and that cannot be made is a FATAL."""
    keygen = proc.which("ssh-keygen")
    if keygen is None:
        raise Fatal("ssh-keygen not found on this host", "install openssh-client to make the VM's SSH host keys")
    with tempfile.TemporaryDirectory(prefix="si-xen-key.") as tmp:
        path = os.path.join(tmp, "key")
        try:
            proc.run([keygen, "-q", "-t", key.type, "-N", "", "-C", tag, "-f", path])
        except proc.ProcError as e:
            if key.loaded:
                raise Fatal(f"cannot make the {key.type} SSH host key {key.path} the VM's sshd loads: {e}",
                            "check that this host's ssh-keygen makes such keys") from None
            ctx.warn(f"identity: cannot make a {key.type} host key ({e}); the cloned {key.path} "
                     "(which sshd does not load) is removed")
            ctx.remove(key.path)
            ctx.remove(key.path + ".pub")
            return None
        with open(path) as f, open(path + ".pub") as p:
            return f.read(), p.read()
