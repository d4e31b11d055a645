"""What an update or a drift report leaves alone in a VM (issue 28 design §3).

``excluded``: what SystemImager never transfers (install-time exclusions, /dev, the
updateclient exclude file's anchored lines, non-local mounts). ``identity``: what makes the VM
itself (host keys, machine-id, hostname and NIC configs of every stack...), built from data.
Both are rsync exclude patterns; :class:`Patterns` matches them as rsync does (man rsync,
"INCLUDE/EXCLUDE PATTERN RULES"; the integration tier compares it with real rsync).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass

from si_xen import populate, sshdconfig
from si_xen.distros.table import STACKS
from si_xen.errors import Fatal
from si_xen.fixups.cloudinit import INSTANCE_DATA as CLOUD_INSTANCE
from si_xen.fixups.cloudinit import SEED as CLOUD_SEED
from si_xen.fixups.identity import LEASES, SEEDS
from si_xen.guestfs import Guest, GuestPathError

SI_EXCLUDE = "etc/systemimager/updateclient.local.exclude"
# SystemImager's shipped updateclient.local.exclude (v4.3 = master; systemimager.md §4.2), used
# when neither the image nor the VM has one. si_updateclient takes only its `^\s*/` lines, so
# "*/.journal" is never used: si_list filters this list as it filters a file.
SI_DEFAULT = """\
/etc/mtab
/proc/*
/sys/*
/var/lock/*
/var/log/*
/var/run/*
/var/spool/*
/etc/lvm/backup/*
/etc/lvm/archive/*
/etc/lvm/.cache
*/.journal
/boot/grub/device.map
/etc/HOSTNAME
/etc/sysconfig/network
/etc/sysconfig/network-scripts/ifcfg-*
/etc/hostname
/etc/network/interfaces
/cdrom/*
/floppy/*
/etc/adjtime
/var/lib/dhcp/dhclient.leases
/var/lib/dhcp3/dhclient.leases
/var/lib/ntp/ntp.drift
/var/lib/urandom/random-seed
/var/lib/locate/locatedb
/var/lib/nfs/*
/media/*
/lib/klibc/events/*
/etc/fstab
/home/*
/mnt/*
/tmp/*
"""
# client.conf's fstype list (what si_updateclient updates) plus later local disk filesystems;
# a mount of any other type (nfs, cifs, tmpfs, proc, iso9660, bind "none"...) is not the VM's disk
LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "ext4dev", "reiserfs", "jfs", "xfs", "btrfs",
                      "vfat", "msdos", "dosfs", "fat"})
# identity for every family (design §3 "Identity paths"); guest-absolute rsync patterns
IDENTITY = (
    "/etc/ssh/ssh_host_*", "/etc/machine-id", "/var/lib/dbus/machine-id",
    *(f"/{p}" for p in SEEDS), *(f"/{d}/{pat}" for d, pat in LEASES),
    "/etc/fstab", "/etc/adjtime", "/boot/grub/device.map",
    *(f"/etc/udev/rules.d/{n}.rules" for n in ("70-persistent-net", "z25_persistent-net",
                                              "30-net_persistent_names")),
    "/var/lib/si-xen/**", "/etc/systemimager/IMAGE_LAST_SYNCED_TO",
    *(f"/{p}" for p in CLOUD_INSTANCE),  # cloud-init's run of this VM: its instance-id, its once-only semaphores
    f"/{CLOUD_SEED}/*",  # the VM's NoCloud seed: an image's (a golden's, changed) would give it the image's instance-id
    "/etc/lvm/backup/*", "/etc/lvm/archive/*", "/etc/krb5.keytab",
)
MAILNAME_FAMILIES = ("debian", "unknown")  # where the hostname fixup always writes /etc/mailname


# -- rsync's pattern rules ------------------------------------------------------------
_POSIX = {"alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "blank": r" \t", "cntrl": r"\x00-\x1f\x7f",
          "digit": "0-9", "graph": "!-~", "lower": "a-z", "print": " -~",
          "punct": re.escape("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"), "space": r" \t\n\r\f\v",
          "upper": "A-Z", "xdigit": "0-9a-fA-F"}
_NEVER = "(?!)"


def _class(pat: str, i: int) -> tuple[str, int]:
    """The [..] at pat[i] as a regex never matching '/', read as rsync's wildmatch.c reads it,
    and the index after it; an unterminated class or an unknown [:name:] aborts rsync's match."""
    j, n = i + 1, len(pat)
    neg = j < n and pat[j] in "!^"
    j += neg
    items: list[str] = []
    prev = None  # the last single character: a following "-x" makes a range from it
    first = True
    while j < n and (first or pat[j] != "]"):
        first, c = False, pat[j]
        if c == "\\":
            j += 1
            if j >= n:
                return _NEVER, n
            prev = pat[j]
            items.append(re.escape(prev))
        elif c == "-" and prev is not None and j + 1 < n and pat[j + 1] != "]":
            j += 1
            hi = pat[j]
            if hi == "\\":
                j += 1
                if j >= n:
                    return _NEVER, n
                hi = pat[j]
            if prev <= hi:  # a reversed range matches nothing (and is an error in re)
                items.append(f"{re.escape(prev)}-{re.escape(hi)}")
            prev = None
        elif c == "[" and pat[j + 1:j + 2] == ":":
            k = pat.find("]", j + 2)
            if k < 0:
                return _NEVER, n
            if pat[k - 1] == ":" and k - 1 >= j + 2:
                name = pat[j + 2:k - 1]
                if name not in _POSIX:
                    return _NEVER, n
                items.append(_POSIX[name])
                j, prev = k, None
            else:  # no ":]": a plain '['
                prev = c
                items.append(re.escape(c))
        else:
            prev = c
            items.append(re.escape(c))
        j += 1
    if j >= n:
        return _NEVER, n
    body = "".join(items)
    if not body:
        return ("[^/]" if neg else _NEVER), j + 1
    return f"(?!/)[{'^' if neg else ''}{body}]", j + 1


def _glob(pat: str) -> str:
    """rsync wildmatch as a regex: '*' stops at '/', '**' (or more) does not, '?' and classes
    never match '/', a backslash quotes the next character."""
    out, i, n = [], 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*":
            j = i
            while j < n and pat[j] == "*":
                j += 1
            out.append(".*" if j - i > 1 else "[^/]*")
            i = j
        elif c == "[":
            cls, i = _class(pat, i)
            out.append(cls)
        elif c == "?":
            out.append("[^/]")
            i += 1
        else:
            if c == "\\" and i + 1 < n:
                i += 1
            out.append(re.escape(pat[i]))
            i += 1
    return "".join(out)


def _rule(pattern: str) -> tuple[bool, str, str | None]:
    """(at_start, dir regex, file regex or None) of one pattern, over a subject "/rel/" (a
    directory) or "/rel" (a file), as rsync's exclude.c rule_matches reads it. An ``at_start``
    regex matches at the subject's start, any other one right after one of its '/'."""
    p = pattern
    dir_only = len(p) > 1 and p.endswith("/")
    if dir_only:
        p = p[:-1]
    anchored = p.startswith("/")
    wild = any(c in p for c in "*?[")
    wild2 = wild and "**" in p
    wild3 = wild2 and p.endswith("***")  # a directory is also matched as "name/"
    body = p[1:] if anchored else p
    core = _glob(body) if wild else re.escape(body)  # no wildcard: backslashes are literal
    if anchored:
        at_start, core = True, f"/{core}"
    else:  # a leading "**": rsync prefixes the name with "/"; else the final name (no '/',
        # no '**'), the last N names, or after any '/' (the search's literal '/')
        at_start = wild2 and p.startswith("**")
    # every match of the dir regex ends right after a '/' (never the root's, at 0): the
    # subject's ancestors and itself
    return at_start, (f"{core}(?<=./)" if wild3 else f"{core}(?<=.)/"), (None if dir_only else core)


class Patterns:
    """A list of rsync exclude patterns, compiled to a few regexes: directories (and every
    ancestor) and files, each for the patterns matched at the start or after any '/'."""

    def __init__(self, lines: Iterable[str]):
        self.lines = tuple(dict.fromkeys(
            s for s in (line.rstrip("\r\n") for line in lines) if s.strip() and s[:1] not in "#;"))
        rules = [_rule(p) for p in self.lines]

        def make(start: bool, which: int, end: str = ""):
            alts = [r[which] for r in rules if r[0] == start and r[which] is not None]
            if not alts:
                return None
            # the literal '/' first lets re's search skip to each '/' (speed: one regex per list)
            rx = re.compile(f"{'' if start else '/'}(?:{'|'.join(alts)}){end}", re.S)
            return rx.match if start else rx.search

        self._dir = [m for m in (make(True, 1), make(False, 1)) if m]
        self._file = [m for m in (make(True, 2, r"\Z"), make(False, 2, r"\Z")) if m]

    def __repr__(self) -> str:
        return f"Patterns({list(self.lines)!r})"

    def matches(self, path: str, is_dir: bool) -> bool:
        """path: guest path with a leading '/' ("/etc/ssh/ssh_host_rsa_key"). True when the path
        or any of its ancestor directories matches (rsync never descends into an excluded dir)."""
        rel = path.strip("/")
        if not rel:
            return False  # the transfer root itself is never matched
        if is_dir:
            subject = f"/{rel}/"
            return any(m(subject) for m in self._dir)
        subject = f"/{rel}"
        return any(m(subject) for m in self._dir) or any(m(subject) for m in self._file)


@dataclass(frozen=True)
class Rules:
    excluded: Patterns
    identity: Patterns

    def classify(self, path: str, is_dir: bool) -> str | None:
        if self.excluded.matches(path, is_dir):
            return "excluded"
        if self.identity.matches(path, is_dir):
            return "identity"
        return None


# -- the lists ---------------------------------------------------------------------------
def _read(root: str | None, gpath: str) -> str | None:
    """A guest file's text; None when the tree or the file is absent, a link, or unreadable."""
    if not root:
        return None
    g = Guest(root)
    try:
        if g.islink(gpath):
            return None
        return g.read_text(gpath)
    except (OSError, GuestPathError):
        return None


def si_list(image_root: str | None, vm_root: str | None) -> list[str]:
    """SystemImager's updateclient exclusions: the `^\\s*/` lines of the exclude file as the new
    image holds it, else the VM's own copy, else SystemImager's default list."""
    text = _read(image_root, SI_EXCLUDE)
    if text is None:
        text = _read(vm_root, SI_EXCLUDE)
    if text is None:
        text = SI_DEFAULT
    # si_updateclient passes each line unquoted to a shell: surrounding blanks go
    return list(dict.fromkeys(s.strip() for s in text.splitlines() if re.match(r"\s*/", s)))


def _escape(path: str) -> str:
    """A literal path inside a wildcard pattern (rsync reads backslashes only in those)."""
    return re.sub(r"([*?\[\\])", r"\\\1", path)


def _literal(path: str) -> str:
    """A path as a pattern of its own: quoted only if it holds a wildcard."""
    return _escape(path) if any(c in path for c in "*?[") else path


def _fstab_field(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)  # fstab(5): \040 is a blank


def nonlocal_mounts(vm_root: str) -> list[str]:
    """"MP/*" for each fstab entry whose type is not a local disk filesystem: the offline twin of
    si_updateclient's /etc/mtab rule (the VM's own filesystems stay; "/" and swap never count)."""
    out = []
    for line in (_read(vm_root, "etc/fstab") or "").splitlines():
        f = line.split()
        if len(f) < 3 or f[0].startswith("#"):
            continue  # malformed or a comment: mount(8) skips it too
        mp = posixpath.normpath(_fstab_field(f[1]))
        if not mp.startswith("/") or mp == "/" or all(t in LOCAL_FS for t in f[2].split(",")):
            continue
        if any(ord(c) < 32 or c == "\x7f" for c in mp):  # a newline would start a filter rule of the guest's ("!")
            continue
        out.append(f"{_escape(mp)}/*")
    return list(dict.fromkeys(out))


def _host_key_paths(vm_root: str) -> list[str]:
    """The HostKey files the VM's sshd_config names (private and public halves); the default
    and image keys are /etc/ssh/ssh_host_* already."""
    try:
        found = sshdconfig.host_keys(Guest(vm_root)) or []
    except (Fatal, GuestPathError, OSError):
        return []  # the identity fixup names a broken config; nothing more to keep here
    out = []
    for p, _ in found:
        if p.startswith("~"):
            continue
        p = posixpath.normpath(p if p.startswith("/") else f"{sshdconfig.SSHDIR}/{p}")
        out += [_literal(p), _literal(p + ".pub")]
    return out


def identity_patterns(osinfo, vm_root: str, nameservers_given: bool = False) -> list[str]:
    """The VM's own files, whichever family and stack: design §3 "Identity paths"."""
    out = list(IDENTITY) + _host_key_paths(vm_root)
    out += [f"/{p}" for p, _ in osinfo.hostname_files]
    if osinfo.family in MAILNAME_FAMILIES:
        out.append("/etc/mailname")
    out += [f"/{c}" for st in STACKS.values() for c in st.configs]
    if nameservers_given:
        out.append("/etc/resolv.conf")
    return list(dict.fromkeys(out))


def rules_for(vm_root: str, image_root: str | None, osinfo, nameservers_given: bool = False) -> Rules:
    excluded = [*populate.EXCLUDES, "/dev/*", *si_list(image_root, vm_root), *nonlocal_mounts(vm_root)]
    return Rules(Patterns(excluded), Patterns(identity_patterns(osinfo, vm_root, nameservers_given)))


__all__ = ["Patterns", "Rules", "si_list", "nonlocal_mounts", "identity_patterns", "rules_for"]
