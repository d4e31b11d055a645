"""cloud-init: a NoCloud seed for the VM, so a modern golden image's cloud-init neither probes the
network for a datasource nor redoes si-xen's fixups (facts: ../shared/reference/lifecycle.md §5).

Every file written is a YAML mapping whose values are JSON (JSON is YAML's flow style): no YAML
emitter needed, and one line per top-level key, which is what cloud-init's ds-identify greps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid

from si_xen.distros.stacks import OURS
from si_xen.fixups.base import Ctx, fixup
from si_xen.fixups.netrender import RENDERERS
from si_xen.guestfs import Guest

SEED = "var/lib/cloud/seed/nocloud"
META = f"{SEED}/meta-data"
# after Debian's 90_dpkg.cfg (its debconf datasource_list) and Ubuntu's 99-installer.cfg: the last file wins,
# for cloud-init's merge and for ds-identify's grep alike
CFG = "etc/cloud/cloud.cfg.d/99_si-xen.cfg"
DISABLED = "etc/cloud/cloud-init.disabled"
PROGRAMS = ("usr/bin/cloud-init", "bin/cloud-init", "usr/local/bin/cloud-init")
# one machine's run of cloud-init (what `cloud-init clean` removes, bar logs): a new VM starts without
INSTANCE_DATA = ("var/lib/cloud/instance", "var/lib/cloud/instances", "var/lib/cloud/data", "var/lib/cloud/sem")
# where a link would make the seed land elsewhere than the guest's cloud-init reads at boot
NO_LINKS = ("var/lib/cloud", "var/lib/cloud/seed", SEED, "etc/cloud", "etc/cloud/cloud.cfg.d")
HEADER = f"{OURS} for this Xen VM (si_mkxenvm --cloud-init, --user-data).\n"
# si-xen's own uuid5 namespace (uuid5(NAMESPACE_URL, "https://si-xen/cloud-init/instance-id")): never change
# it, or the VMs that got their instance-id from it get another one at their next update or rebuild
NAMESPACE = uuid.UUID("de59b2de-0e3a-5661-bd04-a2852c9be7af")


def present(g: Guest) -> bool:
    """cloud-init installed: its program, or its Python package (Debian's dist-packages, Red Hat's
    and SUSE's site-packages); a cloud.cfg left by a removed package does not count."""
    if any(g.isfile(p) for p in PROGRAMS):
        return True
    return any(g.isdir(f"{py}/{sub}/cloudinit") for lib in ("usr/lib", "usr/lib64")
               for py in g.glob(lib, "python3*") for sub in ("dist-packages", "site-packages"))


def disabled(g: Guest) -> str:
    """Why the image's cloud-init does not run ("" = it runs): its off switch, or systemd units masked.
    (The kernel command line's cloud-init=disabled is the boot's, not the image's.)"""
    if g.exists(DISABLED):
        return f"/{DISABLED} exists"
    for unit in ("cloud-init.target", "cloud-init.service"):
        path = f"etc/systemd/system/{unit}"
        if g.islink(path) and g.readlink(path) == "/dev/null":
            return f"{unit} is masked"
    return ""


def document(d: dict) -> str:
    """``d`` as YAML: one ``key: JSON`` line per top-level key."""
    return "".join(f"{k}: {json.dumps(v)}\n" for k, v in d.items())


def instance_id(text: str | None) -> str:
    """The instance-id of a meta-data document (JSON, or YAML's top-level key), "" if none: never
    a value that merely holds the words (a public key's comment), nor ``local-instance-id``."""
    text = text or ""
    try:
        d = json.loads(text)
        return str(d.get("instance-id", "")) if isinstance(d, dict) else ""
    except ValueError:
        pass
    m = re.search(r"""(?m)^["']?instance-id["']?[ \t]*:[ \t]*(?:"([^"\n]*)"|'([^'\n]*)'|([^\s#]+))""", text)
    return next((g for g in m.groups() if g is not None), "") if m else ""


def _links(g: Guest) -> str:
    for p in NO_LINKS:
        if g.islink(p):
            return f"/{p} is a symbolic link"
    return ""


def _carried_id(ctx: Ctx) -> str:
    """A rebuild's: the instance-id of the old VM's seed, carried with its identity (carry.py)."""
    d = ctx.s.identity_dir
    return instance_id(Guest(d).read_text(META)) if d and os.path.isdir(d) else ""


def _instance_id(ctx: Ctx) -> str:
    """Stable for the VM: an update keeps the seed's, a rebuild takes the carried one; a new VM gets a new
    one, except when this fixup runs again on it (its seed's, which is not the image's). A VM that has
    none yet (made before this fixup) gets one from its name and MAC: its first update and a rebuild,
    whichever comes first, agree, and cloud-init sees one instance change, not one per run."""
    g, s = ctx.guest, ctx.s
    have = instance_id(g.read_text(META))
    carried = _carried_id(ctx)
    if carried:
        return carried
    if have and s.keep_identity:
        return have
    if have.startswith("si-xen-") and not s.identity_dir:
        image = Guest(s.image_source) if s.image_source and os.path.isdir(s.image_source) else None
        if image is None or instance_id(image.read_text(META)) != have:
            return have  # made for this VM already
    if s.keep_identity or s.identity_dir:
        return vm_instance_id(s.hostname, s.net.mac)
    return f"si-xen-{uuid.uuid4()}"


def vm_instance_id(name: str, mac: str | None) -> str:
    """The instance-id of an existing VM that has none: the same from its name and first MAC for
    whichever of an update or a rebuild writes it."""
    return f"si-xen-{uuid.uuid5(NAMESPACE, name + ' ' + (mac or '').lower())}"


def _network(ctx: Ctx) -> dict:
    """The VM's addressing as network-config v2, matched by MAC (the vif gets the name the guest's
    udev gives it)."""
    n, nic = ctx.s.net, ctx.os.nic
    eth: dict = {"match": {"macaddress": n.mac}, "set-name": nic} if n.mac else {}
    if n.dhcp:
        eth["dhcp4"] = True
    else:
        eth["addresses"] = [f"{ip}/{n.prefixlen}" for ip in n.ips]
        if n.gateway:
            eth["routes"] = [{"to": "0.0.0.0/0", "via": n.gateway}]
    if n.nameservers:
        eth["nameservers"] = {"addresses": list(n.nameservers), **({"search": [ctx.s.domain]} if ctx.s.domain else {})}
    return {"version": 2, "ethernets": {nic: eth}}


def _remove_tree(ctx: Ctx, gpath: str) -> None:
    """Remove a file, link or directory tree of the guest; a link is removed, never followed
    (shutil.rmtree unlinks the links inside a tree)."""
    g = ctx.guest
    host = g.path(gpath, follow=False)
    if os.path.isdir(host) and not os.path.islink(host):
        ctx.own(gpath)
        shutil.rmtree(host)
        ctx.note(f"removed /{gpath}/ (the golden client's cloud-init instance data)")
    elif os.path.lexists(host):
        ctx.remove(gpath)


@fixup("cloudinit", 75, "cloud-init", watches=(
    *PROGRAMS, "usr/lib{,64}/python3*/{dist,site}-packages/cloudinit/__init__.py", "etc/cloud/cloud.cfg",
    "etc/cloud/cloud.cfg.d/*", DISABLED, "etc/systemd/system/cloud-init.{target,service}"))
def cloudinit(ctx: Ctx) -> None:
    """A NoCloud seed for the guest's cloud-init, or cloud-init turned off (--cloud-init off).

    Only where the guest has cloud-init and it is not disabled (si-xen's own switch, in an image
    captured from a VM made with --cloud-init off, does not count for a new VM): /var/lib/cloud/seed/nocloud gets
    meta-data (an instance-id kept by updates and rebuilds, new for a new VM; local-hostname),
    user-data (--user-data FILE, else empty) and network-config; /etc/cloud/cloud.cfg.d/99_si-xen.cfg
    limits the datasources to NoCloud (no network probing at boot) and keeps si-xen's work when
    cloud-init runs its per-instance modules: SSH host keys (ssh_deletekeys: false, ssh_genkeytypes:
    the kinds it has), hostname and /etc/hosts (preserve_hostname, manage_etc_hosts: false), apt's sources.list,
    and the network where si-xen configured the guest's stack (network: config: disabled). A new VM
    loses the golden client's cloud-init instance data. With --cloud-init off,
    /etc/cloud/cloud-init.disabled is written instead.
    """
    g, s = ctx.guest, ctx.s
    if not present(g):
        ctx.log("cloudinit: cloud-init not present; nothing to do")
        return
    why = disabled(g)
    if why and s.cloud_init != "off" and not s.keep_identity and (g.read_text(DISABLED) or "").startswith(OURS):
        ctx.remove(DISABLED)  # a captured VM's --cloud-init off, not the image's choice: a new VM's cloud-init runs
        why = disabled(g)
    if s.cloud_init == "off":
        if not why:
            ctx.write(DISABLED, HEADER)
        return
    if why:
        ctx.log(f"cloudinit: cloud-init disabled in the image ({why}); left alone")
        return
    link = _links(g)
    if link:
        ctx.warn(f"cloudinit: {link}; no NoCloud seed written (cloud-init will look for a datasource)")
        return
    iid = _instance_id(ctx)  # before the instance data goes: a rerun reads the seed it wrote
    if not s.keep_identity:
        for p in INSTANCE_DATA:
            _remove_tree(ctx, p)
    meta = {"instance-id": iid, **({"local-hostname": s.hostname} if s.hostname else {})}
    ctx.write(META, HEADER + document(meta), mode=0o600)
    # Two writers of one NIC's config race (whichever runs last at boot wins, and an update's rerun
    # of the network fixup knows only its own files): where si-xen renders the guest's stack (every
    # stack it knows) it has written that stack's config and neutralised the others, so cloud-init
    # must write none - not even its fallback DHCP config, which it makes when given no network
    # config. Said in the system config too: cloud-init reads it before the datasource's, so it
    # also outranks a golden client's cloud.cfg.d network (an installer's 50-curtin-networking.cfg).
    # Only a guest whose stack si-xen cannot render gets the VM's addressing as v2 for cloud-init.
    ours = ctx.os.network in RENDERERS
    net = {"config": "disabled"} if ours else _network(ctx)
    for p in ["etc/cloud/cloud.cfg", *g.glob("etc/cloud/cloud.cfg.d", "*.cfg")]:
        text = "" if p == CFG else g.read_text(p) or ""
        if not ours and re.search(r"(?m)^network\s*:", text):
            ctx.warn(f"cloudinit: /{p} has a network config, which cloud-init takes before the seed's; "
                     "remove it from the image for the VM's addressing to apply")
        # NoCloud takes its system config's seedfrom (a URL) or inline meta-data/user-data before a seed dir
        if re.search(r"(?ms)^datasource\s*:.*?\bNoCloud\s*:.*?^\s+(seedfrom|meta-data|user-data)\s*:", text):
            ctx.warn(f"cloudinit: /{p} gives NoCloud a seed of its own, which cloud-init takes before si-xen's "
                     "(its instance-id, hostname, user-data); remove it from the image")
    ctx.write(f"{SEED}/network-config", HEADER + document(net), mode=0o600)
    if s.user_data:
        ctx.write(f"{SEED}/user-data", s.user_data, mode=0o600)
    elif not g.exists(f"{SEED}/user-data") or not s.keep_identity:
        ctx.write(f"{SEED}/user-data", "", mode=0o600)  # NoCloud ignores a seed dir without one
    # cloud-init makes each of ssh_genkeytypes that is missing; "none" is not a value its schema
    # takes (an empty list: "Invalid cloud-config provided" at every boot), so: the kinds si-xen made
    keys = sorted(m.group(1) for p in g.glob("etc/ssh", "ssh_host_*_key")
                  if (m := re.fullmatch(r"etc/ssh/ssh_host_(dsa|ecdsa|ed25519|rsa)_key", p)))  # its schema's kinds
    cfg = {"datasource_list": ["NoCloud", "None"], "ssh_deletekeys": False,
           **({"ssh_genkeytypes": keys} if keys else {}), "preserve_hostname": True, "manage_etc_hosts": False,
           "apt": {"preserve_sources_list": True},  # the golden client's sources.list, not a generated one
           **({"network": {"config": "disabled"}} if ours else {})}
    ctx.write(CFG, HEADER + document(cfg))
    if not s.keep_identity and g.exists(f"{SEED}/vendor-data"):
        ctx.remove(f"{SEED}/vendor-data")  # a golden seed's: NoCloud would merge it into ours
