"""What differs between distro releases, as data: one row per (id, first release).

The fixups read these fields; they never test a distro name. ``nic`` is the name the
guest's kernel+udev give the Xen vif: ``eth0`` before systemd's predictable names knew
Xen netfront devices (systemd < 250), ``enX0`` after.
"""

from __future__ import annotations

from dataclasses import dataclass

# hostname file styles: "short" (host only), "fqdn", "sysconfig" (HOSTNAME= in a shell file)
DEB_HOSTNAME = (("etc/hostname", "short"),)
RH_OLD_HOSTNAME = (("etc/sysconfig/network", "sysconfig"),)
RH_HOSTNAME = (("etc/hostname", "fqdn"), ("etc/sysconfig/network", "sysconfig"))
SUSE_OLD_HOSTNAME = (("etc/HOSTNAME", "fqdn"),)
SUSE_HOSTNAME = (("etc/hostname", "fqdn"), ("etc/HOSTNAME", "fqdn"))


@dataclass(frozen=True)
class Profile:
    family: str
    init: str  # systemd | upstart | sysvinit
    nic: str
    network: str  # ifupdown | netplan | ifcfg | nm-keyfile | suse-ifcfg | networkd | none
    hostname_files: tuple[tuple[str, str], ...]
    initramfs: str  # initramfs-tools | dracut | mkinitrd | none


def _p(family, init, nic, network, hostname_files, initramfs):
    return Profile(family, init, nic, network, hostname_files, initramfs)


# id -> [(first release, profile)], ascending; a release uses the last row <= it.
RELEASES: dict[str, list[tuple[str, Profile]]] = {
    "debian": [
        ("0", _p("debian", "sysvinit", "eth0", "ifupdown", DEB_HOSTNAME, "initramfs-tools")),
        ("8", _p("debian", "systemd", "eth0", "ifupdown", DEB_HOSTNAME, "initramfs-tools")),
        ("12", _p("debian", "systemd", "enX0", "ifupdown", DEB_HOSTNAME, "initramfs-tools")),
    ],
    "ubuntu": [
        ("0", _p("debian", "sysvinit", "eth0", "ifupdown", DEB_HOSTNAME, "initramfs-tools")),
        ("6.10", _p("debian", "upstart", "eth0", "ifupdown", DEB_HOSTNAME, "initramfs-tools")),
        ("15.04", _p("debian", "systemd", "eth0", "ifupdown", DEB_HOSTNAME, "initramfs-tools")),
        ("17.10", _p("debian", "systemd", "eth0", "netplan", DEB_HOSTNAME, "initramfs-tools")),
        ("23.04", _p("debian", "systemd", "enX0", "netplan", DEB_HOSTNAME, "initramfs-tools")),
    ],
    "centos": [
        ("0", _p("redhat", "sysvinit", "eth0", "ifcfg", RH_OLD_HOSTNAME, "mkinitrd")),
        ("6", _p("redhat", "upstart", "eth0", "ifcfg", RH_OLD_HOSTNAME, "dracut")),
        ("7", _p("redhat", "systemd", "eth0", "ifcfg", RH_HOSTNAME, "dracut")),
        ("9", _p("redhat", "systemd", "enX0", "nm-keyfile", RH_HOSTNAME, "dracut")),
    ],
    "rhel": [
        ("0", _p("redhat", "sysvinit", "eth0", "ifcfg", RH_OLD_HOSTNAME, "mkinitrd")),
        ("6", _p("redhat", "upstart", "eth0", "ifcfg", RH_OLD_HOSTNAME, "dracut")),
        ("7", _p("redhat", "systemd", "eth0", "ifcfg", RH_HOSTNAME, "dracut")),
        ("9", _p("redhat", "systemd", "enX0", "nm-keyfile", RH_HOSTNAME, "dracut")),
    ],
    "fedora": [
        ("0", _p("redhat", "systemd", "eth0", "ifcfg", RH_HOSTNAME, "dracut")),
        ("33", _p("redhat", "systemd", "eth0", "nm-keyfile", RH_HOSTNAME, "dracut")),
        ("36", _p("redhat", "systemd", "enX0", "nm-keyfile", RH_HOSTNAME, "dracut")),
    ],
    "opensuse": [  # 10.x .. 13.x and Leap (42.x, 15.x) share the "opensuse" key
        ("0", _p("suse", "sysvinit", "eth0", "suse-ifcfg", SUSE_OLD_HOSTNAME, "mkinitrd")),
        ("12.1", _p("suse", "systemd", "eth0", "suse-ifcfg", SUSE_OLD_HOSTNAME, "mkinitrd")),
        ("13.2", _p("suse", "systemd", "eth0", "suse-ifcfg", SUSE_HOSTNAME, "dracut")),
    ],
    "sles": [
        ("0", _p("suse", "sysvinit", "eth0", "suse-ifcfg", SUSE_OLD_HOSTNAME, "mkinitrd")),
        ("12", _p("suse", "systemd", "eth0", "suse-ifcfg", SUSE_HOSTNAME, "dracut")),
    ],
}
RELEASES["rocky"] = RELEASES["almalinux"] = RELEASES["ol"] = RELEASES["rhel"]
RELEASES["scientific"] = RELEASES["rhel"]

# ID/ID_LIKE words -> the RELEASES key a derivative falls back to
LIKE = {
    "debian": "debian", "ubuntu": "ubuntu", "rhel": "rhel", "centos": "rhel", "fedora": "fedora",
    "suse": "opensuse", "opensuse": "opensuse", "sles": "sles",
}
# openSUSE Leap 42.x is 13.2-era, Leap 15 is SLE 15: map to the comparable release
SUSE_LEAP_RELEASE = {"42": "13.2", "15": "15"}

UNKNOWN_SYSTEMD = _p("unknown", "systemd", "eth0", "none", DEB_HOSTNAME, "none")
UNKNOWN_SYSV = _p("unknown", "sysvinit", "eth0", "none", DEB_HOSTNAME, "none")

# Release files older guests carry instead of (or beside a broken) os-release, in the order
# read: (path, how it is read). Named in the FATAL when none identifies the guest.
LEGACY_FILES = (
    ("etc/lsb-release", "lsb"), ("etc/centos-release", "redhat"), ("etc/rocky-release", "redhat"),
    ("etc/almalinux-release", "redhat"), ("etc/oracle-release", "redhat"), ("etc/fedora-release", "redhat"),
    ("etc/redhat-release", "redhat"), ("etc/system-release", "redhat"), ("etc/SuSE-release", "suse"),
    ("etc/SUSE-brand", "suse"), ("etc/debian_version", "debian"),
)
# a redhat-style release line's words -> the os-release ID it stands for (first match wins)
REDHAT_NAMES = (("centos", "centos"), ("rocky", "rocky"), ("alma", "almalinux"), ("oracle", "ol"),
                ("scientific", "scientific"), ("fedora", "fedora"), ("red hat", "rhel"))
# Debian testing/sid write a codename, not a number, in /etc/debian_version
DEBIAN_CODENAMES = {"squeeze": "6", "wheezy": "7", "jessie": "8", "stretch": "9", "buster": "10",
                    "bullseye": "11", "bookworm": "12", "trixie": "13", "forky": "14"}
# systemd (udev) names a Xen netfront vif enX0 from this version on; eth0 before, and without udev
SYSTEMD_NAMES_XEN_VIF = 250


@dataclass(frozen=True)
class Stack:
    """What proves one network stack runs in a guest, and what it reads."""

    units: tuple[str, ...]  # systemd units (first: the daemon); enablement links and aliases
    sysv: tuple[str, ...]  # init scripts whose rc S-links start it (pre-systemd, or no native unit)
    installed: tuple[str, ...]  # files proving it is installed
    # globs of what it reads or keeps per NIC (configs, and wicked's state): the VM's own, so an
    # update or a drift report leaves them to the VM whichever stack it runs (excludes.py)
    configs: tuple[str, ...] = ()


# In the order a tie is broken: several stacks enabled, each with a config for a NIC.
STACKS: dict[str, Stack] = {
    "netplan": Stack((), (), ("usr/sbin/netplan", "lib/netplan/generate", "usr/lib/netplan/generate"),
                     ("etc/netplan/*.yaml",)),
    "nm-keyfile": Stack(("NetworkManager.service", "NetworkManager-wait-online.service",
                         "NetworkManager-dispatcher.service", "dbus-org.freedesktop.NetworkManager.service"),
                        ("NetworkManager", "network-manager"), ("usr/sbin/NetworkManager", "sbin/NetworkManager"),
                        ("etc/NetworkManager/system-connections/*",)),
    "networkd": Stack(("systemd-networkd.service", "systemd-networkd.socket",
                       "systemd-networkd-wait-online.service", "dbus-org.freedesktop.network1.service"),
                      (), ("lib/systemd/systemd-networkd", "usr/lib/systemd/systemd-networkd"),
                      ("etc/systemd/network/*.network", "etc/systemd/network/*.netdev", "etc/systemd/network/*.link")),
    "suse-ifcfg": Stack(("wicked.service", "wickedd.service", "wickedd-auto4.service", "wickedd-dhcp4.service",
                         "wickedd-dhcp6.service", "wickedd-nanny.service"),
                        ("network",), ("etc/sysconfig/network/ifcfg-lo", "sbin/wicked", "usr/sbin/wicked"),
                        ("etc/sysconfig/network/ifcfg-*", "etc/sysconfig/network/ifroute-*", "etc/sysconfig/network/routes",
                         "var/lib/wicked/*")),
    "ifcfg": Stack(("network.service",), ("network",), ("etc/sysconfig/network-scripts",),
                   ("etc/sysconfig/network-scripts/ifcfg-*", "etc/sysconfig/network-scripts/route-*",
                    "etc/sysconfig/network-scripts/route6-*")),
    "ifupdown": Stack(("networking.service",), ("networking",), ("sbin/ifup", "usr/sbin/ifup"),
                      ("etc/network/interfaces", "etc/network/interfaces.d/*")),
}
# netplan's `renderer:` values -> the stack that then runs (netplan's default: networkd)
NETPLAN_BACKENDS = {"networkd": "networkd", "NetworkManager": "nm-keyfile"}
