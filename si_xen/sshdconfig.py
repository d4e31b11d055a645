"""The HostKey lines a guest's sshd obeys when it starts, read as OpenSSH's servconf.c reads them.

Every HostKey met while the config is active counts (they accumulate, in order). A ``Match``
line ends the active part: at start sshd has no connection, so only ``Match all`` makes later
lines count again. ``Include`` reads the sorted glob matches (relative to /etc/ssh) in place;
a file included from an inactive block can never become active. Paths resolve inside the guest
root (a link out of it stays in it), and no guest program is run to learn any of this.
"""

from __future__ import annotations

import fnmatch
import re
import shlex

from .errors import Fatal
from .guestfs import Guest

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
