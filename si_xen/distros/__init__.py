"""Guest OS detection: which distro family and release a tree holds, and its data.

``detect(guest)`` reads ``/etc/os-release`` (or ``/usr/lib/os-release``) first, then the
legacy release files, and returns an :class:`OSInfo` combining the identity with the
release's :class:`~si_xen.distros.table.Profile` (init, NIC name, network renderer...).
Distro differences live in :mod:`si_xen.distros.table`; fixups only read OSInfo fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from si_xen.distros import table
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


# Markers proving a network renderer is installed in the tree, and the renderers a
# family falls back to (in order) when the release's default one is absent.
RENDERER_MARKERS = {
    "ifupdown": ("sbin/ifup", "usr/sbin/ifup"),
    "netplan": ("usr/sbin/netplan", "etc/netplan"),
    "ifcfg": ("etc/sysconfig/network-scripts",),
    "nm-keyfile": ("usr/sbin/NetworkManager",),
    "suse-ifcfg": ("etc/sysconfig/network/ifcfg-lo", "sbin/wicked", "usr/sbin/wicked"),
    "networkd": ("lib/systemd/systemd-networkd", "usr/lib/systemd/systemd-networkd"),
}
FALLBACK_RENDERERS = {
    "debian": ("netplan", "ifupdown", "networkd"),
    "redhat": ("nm-keyfile", "ifcfg"),
    "suse": ("suse-ifcfg",),
    "unknown": ("ifupdown", "networkd"),
}


def _has(guest: Guest, renderer: str) -> bool:
    return any(guest.exists(p) for p in RENDERER_MARKERS.get(renderer, ()))


def _renderer(guest: Guest, prof: table.Profile) -> str:
    if prof.network != "none" and _has(guest, prof.network):
        return prof.network
    for alt in FALLBACK_RENDERERS[prof.family]:
        if _has(guest, alt):
            return alt
    return prof.network  # nothing installed we recognise: write the release's own format


def _tree_init(guest: Guest) -> str:
    init = guest.readlink("sbin/init") if guest.islink("sbin/init") else ""
    if "systemd" in init or (guest.exists("lib/systemd/systemd") and not guest.exists("etc/inittab")):
        return "systemd"
    if guest.exists("sbin/initctl") and (guest.glob("etc/init", "*.conf") or guest.isdir("etc/event.d")):
        return "upstart"
    return "sysvinit"


def _legacy(guest: Guest) -> tuple[str, str, str]:
    """(id, release, pretty) from pre-os-release files, or ("unknown", "", "")."""
    lsb = parse_os_release(guest.read_text("etc/lsb-release", "") or "")
    if lsb.get("DISTRIB_ID", "").lower() == "ubuntu":
        rel = lsb.get("DISTRIB_RELEASE", "")
        return "ubuntu", rel, lsb.get("DISTRIB_DESCRIPTION", f"Ubuntu {rel}")
    for path in ("etc/centos-release", "etc/redhat-release"):
        text = (guest.read_text(path, "") or "").strip()
        if text:
            m = re.search(r"release\s+([\d.]+)", text)
            low = text.lower()
            oid = next((k for k in ("centos", "rocky", "almalinux", "scientific", "fedora") if k in low), "rhel")
            return oid, m.group(1) if m else "", text.splitlines()[0]
    suse = guest.read_text("etc/SuSE-release", "") or ""
    if suse.strip():
        kv = parse_os_release(suse.upper())
        rel = kv.get("VERSION", "")
        oid = "sles" if "enterprise" in suse.lower() else "opensuse"
        return oid, rel, suse.splitlines()[0].strip()
    deb = (guest.read_text("etc/debian_version", "") or "").strip()
    if deb:
        m = re.match(r"(\d+)(?:\.(\d+))?", deb)
        # Debian < 7 numbered releases major.minor (4.0, 5.0); major is what os-release uses
        rel = (m.group(1) if int(m.group(1)) >= 4 else f"{m.group(1)}.{m.group(2) or 0}") if m else ""
        return "debian", rel, f"Debian GNU/Linux {deb}"
    return "unknown", "", ""


def detect(guest: Guest) -> OSInfo:
    """Identify the OS in ``guest``; unknown systems get generic systemd/sysvinit data."""
    text = guest.read_text("etc/os-release") or guest.read_text("usr/lib/os-release")
    if text:
        kv = parse_os_release(text)
        oid = kv.get("ID", "linux").lower()
        release = kv.get("VERSION_ID", "")
        pretty = kv.get("PRETTY_NAME") or f"{kv.get('NAME', oid)} {release}".strip()
        likes = [oid] + kv.get("ID_LIKE", "").lower().split()
    else:
        oid, release, pretty = _legacy(guest)
        likes = [oid]

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
        prof = table.Profile(prof.family, init, prof.nic, prof.network, prof.hostname_files, prof.initramfs)
        return OSInfo(oid if text else "unknown", "unknown", release, init, pretty or "unknown OS",
                      prof.nic, _renderer(guest, prof), prof.hostname_files, "none", known=False)

    prof = _profile(key, lookup_release)
    return OSInfo(oid, prof.family, release, prof.init, pretty or f"{oid} {release}", prof.nic,
                  _renderer(guest, prof), prof.hostname_files, prof.initramfs)
