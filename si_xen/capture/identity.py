"""The machine's identity removed from a captured copy, with or without the V2P reversal: what
makes one machine and must not reach the next ones made from the image — SSH host keys,
machine-id (emptied, as systemd expects), random seeds, DHCP leases, udev's persistent-net rules,
cloud-init's instance data (virt-sysprep's operations of the same names, lifecycle.md §3).

The copy is untrusted: every path goes through guestfs.Guest; a file is replaced, never written in
place (with --update it may be a hard link into the published image).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
import stat

from si_xen import sshdconfig
from si_xen.distros.stacks import OURS
from si_xen.errors import Fatal
from si_xen.fixups.identity import LEASES, SEEDS
from si_xen.fixups.macs import PERSISTENT_NET
from si_xen.guestfs import Guest, GuestPathError

# identity, as strip_identity removes it (guest paths; a trailing * is fnmatch's)
IDENTITY_FILES = (*SEEDS, "var/lib/systemd/credential.secret", "etc/ssh/ssh_host_key", "etc/ssh/ssh_host_key.pub",
                  *(f"etc/udev/rules.d/{n}" for n in PERSISTENT_NET))
NOCLOUD = "var/lib/cloud/seed/nocloud"


def is_identity(p: str) -> bool:
    """Whether guest path ``p`` is one machine's (what strip_identity removes or empties)."""
    rel = p.lstrip("/")
    return (rel in IDENTITY_FILES or fnmatch.fnmatch(rel, "etc/ssh/ssh_host_*") or rel in ("etc/machine-id",
            "var/lib/dbus/machine-id") or any(fnmatch.fnmatch(rel, f"{d}/{pat}") for d, pat in LEASES)
            or rel.startswith("var/lib/cloud/"))


def strip_identity(tree: str) -> list[str]:
    """Remove the machine's identity from ``tree`` (a copy, untrusted): SSH host keys (those the
    sshd_config names too), machine-id emptied as systemd expects (the file kept, so a read-only
    root still boots), the D-Bus machine-id file, random seeds, systemd's credential secret, DHCP
    leases, udev's persistent-net rules, cloud-init's instance data (what ``cloud-init clean`` removes: /var/lib/cloud but its
    seed) and si-xen's own NoCloud seed. Returns what was removed or emptied, a line each."""
    g, done = Guest(tree), []

    def rm(gpath: str) -> None:
        try:
            if g.islink(gpath) or g.isfile(gpath) or g.exists(gpath) and not g.isdir(gpath):
                g.unlink(gpath)
                done.append(f"removed /{gpath.lstrip('/')}")
        except GuestPathError:
            pass

    keys = set(g.glob("etc/ssh", "ssh_host_*"))
    with contextlib.suppress(Fatal, GuestPathError, OSError):
        for k in sshdconfig.vm_keys(g):
            if g.exists(k.path) or g.exists(k.path + ".pub"):
                keys |= {k.path.lstrip("/"), k.path.lstrip("/") + ".pub"}
    for k in sorted(keys):
        rm(k)
    try:
        if g.islink("etc/machine-id"):
            g.unlink("etc/machine-id")
            g.write_text("etc/machine-id", "", 0o444)
            done.append("emptied /etc/machine-id (was a link)")
        elif g.isfile("etc/machine-id") and os.path.getsize(g.path("etc/machine-id")):
            # replaced, never truncated in place: with --update it may be a hard link into the
            # published image (rsync --link-dest); mode and owner kept
            st = os.stat(g.path("etc/machine-id"))
            g.unlink("etc/machine-id")
            g.write_text("etc/machine-id", "", stat.S_IMODE(st.st_mode))
            os.chown(g.path("etc/machine-id", follow=False), st.st_uid, st.st_gid, follow_symlinks=False)
            done.append("emptied /etc/machine-id")
    except GuestPathError:
        pass
    if not g.islink("var/lib/dbus/machine-id"):  # a link to /etc/machine-id is what systemd guests ship
        rm("var/lib/dbus/machine-id")
    for p in IDENTITY_FILES:
        rm(p)
    for d, pattern in LEASES:
        for p in g.glob(d, pattern):
            rm(p)
    try:
        cloud = g.path("var/lib/cloud", follow=False)
        if os.path.isdir(cloud) and not os.path.islink(cloud):
            for name in sorted(os.listdir(cloud)):
                if name == "seed":
                    continue
                host = os.path.join(cloud, name)
                if os.path.isdir(host) and not os.path.islink(host):
                    shutil.rmtree(host)
                else:
                    os.unlink(host)
                done.append(f"removed /var/lib/cloud/{name}")
    except GuestPathError:
        pass
    with contextlib.suppress(GuestPathError):  # si-xen's NoCloud seed (fixups/cloudinit.py): one VM's instance-id
        if (g.read_text(f"{NOCLOUD}/meta-data") or "").startswith(OURS):
            for name in ("meta-data", "network-config", "user-data"):
                rm(f"{NOCLOUD}/{name}")
    return done
