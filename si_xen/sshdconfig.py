"""The host keys a VM gets: those its sshd loads, from the HostKey lines it obeys when it starts,
read as OpenSSH's servconf.c reads them (else OpenSSH's defaults).

Every HostKey met while the config is active counts (they accumulate, in order). A ``Match``
line ends the active part: at start sshd has no connection, so only ``Match all`` makes later
lines count again. ``Include`` reads the sorted glob matches (relative to /etc/ssh) in place;
a file included from an inactive block can never become active. Paths resolve inside the guest
root (a link out of it stays in it), and no guest program is run to learn any of this.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import posixpath
import re
import shlex
from dataclasses import dataclass

from . import keyfiles
from .errors import Fatal
from .guestfs import Guest, GuestPathError

SSHDIR = "/etc/ssh"
CONFIG = "/etc/ssh/sshd_config"
MAX_DEPTH = 16  # READCONF_MAX_DEPTH: sshd refuses deeper Include nesting
HOSTKEY = ("hostkey", "hostdsakey")  # hostdsakey: an old alias


def host_keys(guest: Guest) -> list[tuple[str, str]] | None:
    """(path, "FILE line N") of each HostKey sshd loads; None if the guest has no sshd_config."""
    guest.path(SSHDIR)  # a link loop is named where it is: /etc/ssh, not the file in it
    text = guest.read_text(CONFIG)
    if text is None:
        return None
    found: list[tuple[str, str]] = []
    _parse(guest, CONFIG, text, found, [True], never=False, depth=0)
    return found


def _split(path: str, n: int, line: str) -> tuple[str, list[str]]:
    """Keyword (lower case) and arguments: ``Key value``, ``Key=value``, quotes, ``#`` comments."""
    body = line.strip()
    if not body or body.startswith("#"):
        return "", []
    m = re.match(r"([^\s=]+)\s*=?\s*(.*)", body)
    if m is None:
        return "", []
    key, rest = m.groups()
    lex = shlex.shlex(rest, posix=True)
    lex.whitespace_split, lex.commenters = True, ""
    try:
        args = list(lex)
    except ValueError:
        raise Fatal(f"{path} line {n}: unbalanced quotes in the guest's sshd config",
                    "fix the line in the image (sshd refuses it too)") from None
    for i, a in enumerate(args):
        if a.startswith("#"):
            return key.lower(), args[:i]
    return key.lower(), args


def _parse(guest: Guest, path: str, text: str, found: list, active: list[bool], never: bool, depth: int) -> None:
    for n, line in enumerate(text.splitlines(), 1):
        key, args = _split(path, n, line)
        if key == "match":
            # no connection yet: only "Match all" matches; never inside a file included from a Match
            active[0] = not never and [a.lower() for a in args] == ["all"]
        elif key in HOSTKEY and args and active[0]:
            found.append((args[0], f"{path} line {n}"))
        elif key == "include":
            if depth + 1 > MAX_DEPTH:
                raise Fatal(f"{path} line {n}: Include nested more than {MAX_DEPTH} deep",
                            "fix the Include loop in the image's sshd config (sshd refuses it too)")
            was = active[0]
            for pattern in args:
                for inc in _glob(guest, pattern if pattern.startswith("/") else f"{SSHDIR}/{pattern}"):
                    _parse(guest, inc, guest.read_text(inc) or "", found, active, not was, depth + 1)
                    active[0] = was


def _glob(guest: Guest, pattern: str) -> list[str]:
    """glob(3) inside the guest: the existing paths matching ``pattern``, sorted."""
    paths = [""]
    for comp in [c for c in pattern.split("/") if c]:
        if any(ch in comp for ch in "*?["):
            hidden = comp.startswith(".")  # glob(3): a wildcard never matches a leading dot
            paths = [f"{p}/{name}" for p in paths for name in guest.listdir(p or "/")
                     if fnmatch.fnmatchcase(name, comp) and (hidden or not name.startswith("."))]
        else:
            paths = [f"{p}/{comp}" for p in paths]
    return sorted(p for p in paths if guest.exists(p))


# --- the keys a VM gets, from what its sshd loads

KEY_TYPES = {"rsa": "rsa", "dsa": "dsa", "ecdsa": "ecdsa", "ed25519": "ed25519"}
DEFAULT_TYPES = ("rsa", "ecdsa", "ed25519")  # what sshd loads with no HostKey line (servconf.c)
SSH1_KEY = "ssh_host_key"  # SSH-1's rsa1: no modern ssh-keygen makes one, no modern sshd loads it


@dataclass(frozen=True)
class HostKey:
    path: str  # absolute guest path of the private half; the public one is path + ".pub"
    type: str  # ssh-keygen -t
    loaded: bool  # sshd loads it (else a key the image had that sshd does not use)


def vm_keys(guest: Guest) -> list[HostKey]:
    """The host keys a VM of this image gets, fresh: every key its sshd loads (the HostKey lines
    of its sshd_config, else OpenSSH's defaults), whether or not the image has it (si_getimage
    leaves none), then any other key the image has in /etc/ssh (a golden client's key is never
    handed on). Each key's files are resolved now: a link loop stops the deploy before it starts."""
    conf = host_keys(guest)
    if conf is None:  # no sshd: only the image's own keys are renewed
        keys = []
    elif conf:
        keys = [HostKey(p, _type(guest, p, where), True) for p, where in
                ((_absolute(p, where), where) for p, where in conf) if os.path.basename(p) != SSH1_KEY]
    else:
        keys = [HostKey(f"/etc/ssh/ssh_host_{t}_key", t, True) for t in DEFAULT_TYPES]
    for path in guest.glob("/etc/ssh", "ssh_host_*_key"):
        t = path.rsplit("/", 1)[1][len("ssh_host_"):-len("_key")]
        if t in KEY_TYPES:
            keys.append(HostKey(path, KEY_TYPES[t], False))
    out: dict[str, HostKey] = {}
    for k in keys:
        for f in (k.path, k.path + ".pub"):
            guest.path(f)  # GuestPathError on a loop
        out.setdefault(k.path, k)
    return list(out.values())


def key_types(guest: Guest) -> list[str]:
    """The types of :func:`vm_keys`, each once: what :class:`hostkeys.Prefetch` makes ahead."""
    return list(dict.fromkeys(k.type for k in vm_keys(guest)))


def _absolute(path: str, where: str) -> str:
    if path.startswith("~"):  # sshd would look in the home of the user it runs as
        raise Fatal(f"{where}: HostKey {path}: a path in a home directory",
                    "give HostKey an absolute path in the image's sshd config")
    return posixpath.normpath(path if path.startswith("/") else f"{SSHDIR}/{path}")


def _type(guest: Guest, path: str, where: str) -> str:
    """The key type its file name tells (ssh_host_ed25519_key), else its public half in the image."""
    words = set(re.split(r"[^a-z0-9]+", os.path.basename(path).lower())) & set(KEY_TYPES)
    if len(words) == 1:
        return KEY_TYPES[words.pop()]
    pub = (guest.read_text(path + ".pub") or "").split()[:1]
    t = keyfiles.pub_type(pub[0].encode()) if pub else None
    if t:
        return t
    raise Fatal(f"{where}: HostKey {path}: cannot tell the key type from the file name",
                "name the file after its type (rsa, ecdsa or ed25519, e.g. ssh_host_ed25519_key) "
                "in the image's sshd config, or put that key pair in the image")


def fingerprints(guest: Guest) -> list[str]:
    """The fingerprints of the host keys a made VM's sshd serves (what ssh-keyscan sees; with no
    sshd, of all :func:`vm_keys`), each of the public half its private key file holds (a stale
    .pub file cannot mislead); the comment is the .pub file's."""
    try:
        keys = vm_keys(guest)
        keys = [k.path for k in ([k for k in keys if k.loaded] or keys)]
    except (Fatal, GuestPathError):  # the identity fixup was skipped: what /etc/ssh has
        keys = guest.glob("/etc/ssh", "ssh_host_*_key")
    out = []
    for path in keys:
        pub = (guest.read_text(path + ".pub") or "").split()
        blob = keyfiles.public_half(guest.read_text(path) or "")
        try:
            if blob is None:
                blob = base64.b64decode(pub[1], validate=True)
            out.append(keyfiles.fingerprint_of(blob, pub[2:]))
        except (IndexError, ValueError):
            pass  # not a key: nothing to show
    return out
