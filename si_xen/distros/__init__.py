"""Guest OS detection: which distro family and release a tree holds, and its data.

``detect(guest)`` reads ``/etc/os-release`` (or ``/usr/lib/os-release``) first, then (when
neither has a usable ID) the legacy release files, and returns an :class:`OSInfo` combining
the identity with the release's :class:`~si_xen.distros.table.Profile` (init, NIC name, network renderer...).
Distro differences live in :mod:`si_xen.distros.table`; fixups only read OSInfo fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from si_xen.distros import stacks, table
from si_xen.errors import Fatal
from si_xen.guestfs import Guest

__all__ = ["OSInfo", "detect", "parse_os_release"]


@dataclass(frozen=True)
class OSInfo:
    id: str  # os-release ID: debian, ubuntu, centos, rocky, almalinux, opensuse-leap, ... unknown
    family: str  # debian | redhat | suse | unknown
    release: str  # "12", "7.10", "5.4"; "" when unknown
    init: str  # systemd | upstart | sysvinit
    pretty: str
    nic: str  # the vif's name inside the guest: eth0 or enX0
    network: str  # renderer: ifupdown netplan ifcfg nm-keyfile suse-ifcfg networkd none
    hostname_files: tuple[tuple[str, str], ...] = ()
    initramfs: str = "none"
    known: bool = True
    backend: str = ""  # netplan's renderer (networkd | NetworkManager) when network is netplan

    @property
    def major(self) -> int:
        m = re.match(r"\d+", self.release)
        return int(m.group()) if m else 0


def parse_os_release(text: str) -> dict[str, str]:
    """KEY=value lines of an os-release file, shell quoting removed."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"\s*([A-Z0-9_]+)\s*=\s*(.*?)\s*$", line)
        if not m:
            continue
        val = m.group(2)
        if len(val) >= 2 and val[0] == val[-1] and val[0] in "\"'":
            val = val[1:-1]
        out[m.group(1)] = re.sub(r"\\(.)", r"\1", val)
    return out


def _vkey(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", release)[:3]) or (0,)


def _profile(key: str, release: str) -> table.Profile:
    rows = table.RELEASES[key]
    chosen = rows[0][1]
    for first, prof in rows:
        if _vkey(release) >= _vkey(first):
            chosen = prof
    return chosen


# The stacks a family falls back to (in order) when nothing enabled says which one runs and
# the release's default one is absent.
FALLBACK_RENDERERS = {
    "debian": ("netplan", "ifupdown", "networkd"),
    "redhat": ("nm-keyfile", "ifcfg"),
    "suse": ("suse-ifcfg",),
    "unknown": ("ifupdown", "networkd"),
}
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


def _tree_init(guest: Guest) -> str:
    init = guest.readlink("sbin/init") if guest.islink("sbin/init") else ""
    if "systemd" in init or (guest.exists("lib/systemd/systemd") and not guest.exists("etc/inittab")):
        return "systemd"
    if guest.exists("sbin/initctl") and (guest.glob("etc/init", "*.conf") or guest.isdir("etc/event.d")):
        return "upstart"
    return "sysvinit"


def _legacy(guest: Guest) -> tuple[str, str, str]:
    """(id, release, pretty) from the release files distros shipped before os-release (and still
    do beside it), or ("unknown", "", "")."""
    for path, kind in table.LEGACY_FILES:
        text = (guest.read_text(path, "") or "").strip()
        found = _LEGACY_READERS[kind](text) if text else None
        if found:
            return found
    return "unknown", "", ""


def _lsb(text: str) -> tuple[str, str, str] | None:
    kv = parse_os_release(text)
    oid = kv.get("DISTRIB_ID", "").lower()
    if not _ID.match(oid):
        return None
    rel = kv.get("DISTRIB_RELEASE", "")
    return oid, rel, kv.get("DISTRIB_DESCRIPTION", f"{kv.get('DISTRIB_ID')} {rel}".strip())


def _redhat(text: str) -> tuple[str, str, str] | None:
    m = re.search(r"release\s+([\d.]+)", text)
    low = text.lower()
    oid = next((v for k, v in table.REDHAT_NAMES if k in low), "rhel" if m else None)  # a rebuild: RHEL's
    return (oid, m.group(1) if m else "", text.splitlines()[0]) if oid else None


def _suse(text: str) -> tuple[str, str, str] | None:
    kv = parse_os_release(text.upper())
    low = text.lower()
    if "suse" not in low and not low.startswith("sle"):  # SUSE-brand: "SLE" or "openSUSE"
        return None
    oid = "sles" if "enterprise" in low or low.startswith("sle") else "opensuse"
    return oid, kv.get("VERSION", ""), text.splitlines()[0].strip()


def _debian(text: str) -> tuple[str, str, str] | None:
    m = re.match(r"(\d+)(?:\.(\d+))?", text)
    if m:  # Debian < 7 numbered releases major.minor (4.0, 5.0); major is what os-release uses
        rel = m.group(1) if int(m.group(1)) >= 4 else f"{m.group(1)}.{m.group(2) or 0}"
    else:  # testing/sid: "trixie/sid"
        rel = table.DEBIAN_CODENAMES.get(text.split("/")[0].strip().lower(), "")
    return ("debian", rel, f"Debian GNU/Linux {text.splitlines()[0]}") if rel else None


_LEGACY_READERS = {"lsb": _lsb, "redhat": _redhat, "suse": _suse, "debian": _debian}
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # os-release(5): lower-case letters, digits, "._-"


def _os_release(guest: Guest) -> tuple[dict[str, str], str]:
    """The first os-release with a usable ID= (and the file), else ({}, "")."""
    for path in OS_RELEASE:
        kv = parse_os_release(guest.read_text(path, "") or "")
        if _ID.match(kv.get("ID", "").lower()):
            return kv, path
    return {}, ""


def _systemd_version(guest: Guest) -> int | None:
    """systemd's version, from the name of its shared library (libsystemd-shared-NNN.so, since
    systemd 231); 0 for an older systemd (its daemon but no such library); None without systemd."""
    dirs = [f"{b}/systemd" for b in ("lib", "usr/lib", "lib64", "usr/lib64")]
    dirs += [f"{t}/systemd" for b in ("lib", "usr/lib") for t in guest.glob(b, "*-linux-gnu*")]  # Debian's
    for d in dirs:
        for path in guest.glob(d, "libsystemd-shared-*.so*"):
            m = re.match(r"libsystemd-shared-(\d+)", path.rsplit("/", 1)[1])
            if m:
                return int(m.group(1))
    return 0 if any(guest.exists(f"{b}/systemd/systemd") for b in ("lib", "usr/lib")) else None


def _nic(guest: Guest, default: str) -> str:
    """The vif's name: from the guest's systemd (udev) version when the tree shows it."""
    v = _systemd_version(guest)
    if v is None or v == 0 and default == "enX0":  # no udev of systemd's, or an unknown one: the table's
        return default
    return "enX0" if v >= table.SYSTEMD_NAMES_XEN_VIF else "eth0"


def detect(guest: Guest, require: bool = True) -> OSInfo:
    """Identify the OS in ``guest``: os-release, else every legacy release file. A guest
    nothing identifies is a Fatal if ``require`` (an image), else gets generic data (a
    xen-tools hook's bare prefix), as does an os-release ID the table does not list."""
    kv, _ = _os_release(guest)
    if kv:
        oid = kv["ID"].lower()
        release = kv.get("VERSION_ID", "")
        pretty = kv.get("PRETTY_NAME") or f"{kv.get('NAME', oid)} {release}".strip()
        likes = [oid] + kv.get("ID_LIKE", "").lower().split()
    else:
        oid, release, pretty = _legacy(guest)
        likes = [oid]
    if not kv and oid == "unknown" and require:
        raise _unidentified(guest)

    key = oid if oid in table.RELEASES else None
    if key is None and oid.startswith("opensuse"):
        key = "opensuse"
    lookup_release = release
    if key == "opensuse":
        lookup_release = table.SUSE_LEAP_RELEASE.get(release.split(".")[0], release)
    if key is None:
        key = next((table.LIKE[w] for w in likes if w in table.LIKE), None)

    if key is None:
        init = _tree_init(guest)
        prof = table.UNKNOWN_SYSTEMD if init == "systemd" else table.UNKNOWN_SYSV
        network, backend = _network(guest, prof, init)
        return OSInfo(oid, "unknown", release, init, pretty or ("unknown OS" if oid == "unknown" else oid), _nic(guest, prof.nic), network,
                      prof.hostname_files, "none", known=False, backend=backend)

    prof = _profile(key, lookup_release)
    network, backend = _network(guest, prof, prof.init)
    return OSInfo(oid, prof.family, release, prof.init, pretty or f"{oid} {release}", _nic(guest, prof.nic),
                  network, prof.hostname_files, prof.initramfs, backend=backend)


def _unidentified(guest: Guest) -> Fatal:
    files = OS_RELEASE + tuple(p for p, _ in table.LEGACY_FILES)
    read = [f"/{p}" for p in files if guest.isfile(p)]
    absent = [f"/{p}" for p in files if not guest.isfile(p)]
    said = (f"read {', '.join(read)} (none names a distribution); " if read else "") + f"absent: {', '.join(absent)}"
    return Fatal(f"cannot tell which OS the image holds: {said}",
                 "give the image an /etc/os-release with ID= and VERSION_ID= (see os-release(5)), "
                 "e.g. through an override")


def _network(guest: Guest, prof: table.Profile, init: str) -> tuple[str, str]:
    return stacks.decide(guest, init, prof.network, FALLBACK_RENDERERS[prof.family])
