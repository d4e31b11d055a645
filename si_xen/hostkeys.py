"""SSH host keys for a VM: made by the dom0's ssh-keygen, ahead of need.

An RSA key takes ssh-keygen 0.2-2 s (a random prime search), longer than cloning a whole
VM. si_mkxenvm starts the key generation as soon as it knows the VM's name, so it runs
while the image is surveyed, the disks are made and the tree is copied; the identity
fixup then takes the ready keys from SI_XEN_HOSTKEYS instead of making them itself.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile

from . import proc
from .guestfs import Guest

ENV = "SI_XEN_HOSTKEYS"
KEY_TYPES = {"rsa": "rsa", "dsa": "dsa", "ecdsa": "ecdsa", "ed25519": "ed25519"}


def tag(hostname: str) -> str:
    return f"si-xen:root@{hostname or 'localhost'}"


def image_key_types(guest: Guest) -> list[str]:
    """The key types the image's sshd has (and so the VM gets fresh ones of)."""
    names = (p.rsplit("/", 1)[1] for p in guest.glob("/etc/ssh", "ssh_host_*_key"))
    return [KEY_TYPES[t] for t in (n[len("ssh_host_"):-len("_key")] for n in names) if t in KEY_TYPES]


class Prefetch:
    """ssh-keygen running in the background into a private directory."""

    def __init__(self, types: list[str], hostname: str):
        self.dir = tempfile.mkdtemp(prefix="si-xen-keys.")
        self.procs = []
        keygen = proc.which("ssh-keygen")
        if keygen:
            for t in types:
                argv = [keygen, "-q", "-t", t, "-N", "", "-C", tag(hostname), "-f", os.path.join(self.dir, t)]
                self.procs.append(proc.start(argv))

    def ready(self) -> str:
        """Wait for the keys; return the directory holding TYPE and TYPE.pub files."""
        for p in self.procs:
            p.wait()
        return self.dir

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def take(ktype: str, comment: str, env) -> tuple[str, str] | None:
    """A prefetched (private, public) key pair of this type and comment, if there is one."""
    d = env.get(ENV)
    if not d:
        return None
    try:
        with open(os.path.join(d, ktype)) as f:
            priv = f.read()
        with open(os.path.join(d, ktype + ".pub")) as f:
            pub = f.read()
    except OSError:
        return None
    if pub.split()[2:] != [comment]:
        return None
    os.unlink(os.path.join(d, ktype))  # each key serves one VM only
    return priv, pub


def fingerprint(pub_line: str) -> str:
    """`ssh-keygen -lf` format (SHA256), computed without running it."""
    parts = pub_line.split()
    blob = base64.b64decode(parts[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    kind = {"ssh-rsa": "RSA", "ssh-dss": "DSA", "ssh-ed25519": "ED25519"}.get(parts[0], parts[0].split("-")[0].upper())
    return " ".join([f"SHA256:{digest}", *parts[2:], f"({kind})"])
