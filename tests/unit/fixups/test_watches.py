"""Fixup.watches: the guest paths whose change by an update makes a fixup run again (rsync globs)."""

import pytest

from si_xen.fixups import by_name
from si_xen.fixups.base import watch_regex

GLOBS = [  # (glob, path, matches)
    ("etc/hosts", "etc/hosts", True),
    ("etc/hosts", "etc/hosts.allow", False),
    ("etc/hosts", "x/etc/hosts", False),
    ("etc/event.d/*", "etc/event.d/tty1", True),
    ("etc/event.d/*", "etc/event.d/sub/tty1", False),  # '*' stops at '/'
    ("etc/event.d/*", "etc/event.d", False),
    ("boot/**", "boot/grub/grub.cfg", True),  # '**' crosses it
    ("boot/**", "boot", False),
    ("**/serial-getty@.service", "lib/systemd/system/serial-getty@.service", True),
    ("**/serial-getty@.service", "serial-getty@.service", True),
    ("**/serial-getty@.service", "lib/systemd/system/serial-getty@xservice", False),  # '.' is literal
    ("{,usr/}lib/modules/**", "lib/modules/6.1/x.ko", True),
    ("{,usr/}lib/modules/**", "usr/lib/modules/6.1/x.ko", True),
    ("{,usr/}lib/modules/**", "usr/local/lib/modules/x", False),
    ("etc/sysconfig/network-scripts/{ifcfg,route,route6}-*", "etc/sysconfig/network-scripts/route6-eth0", True),
    ("etc/sysconfig/network-scripts/{ifcfg,route,route6}-*", "etc/sysconfig/network-scripts/ifup-eth", False),
    ("etc/rc?.d/S*", "etc/rc2.d/S01x", True),
    ("etc/rc?.d/S*", "etc/rcS.d/K01x", False),
    ("etc/rc[0-6].d/*", "etc/rc6.d/K01x", True),
    ("etc/rc[!0-6].d/*", "etc/rc6.d/K01x", False),
    ("etc/rc[!0-6].d/*", "etc/rcS.d/K01x", True),
]


@pytest.mark.parametrize("glob,path,matches", GLOBS)
def test_rsync_wildcards(glob, path, matches):
    assert (watch_regex([glob]).fullmatch(path) is not None) is matches


WATCHED = [  # (fixup, guest path, watched)
    ("hwclock", "/etc/rcS.d/S10hwclock.sh", True),
    ("hwclock", "usr/lib/systemd/system/hwclock-save.service", True),
    ("hwclock", "lib/udev/rules.d/85-hwclock.rules", True),
    ("hwclock", "etc/hosts", False),
    ("console", "/etc/inittab", True),
    ("console", "boot/grub/grub.cfg", True),
    ("console", "usr/lib/systemd/system/serial-getty@.service", True),
    ("macs", "etc/udev/rules.d/70-persistent-net.rules", True),
    ("macs", "etc/systemd/network/10-eth.link", True),
    ("network", "/etc/network/interfaces", True),
    ("network", "etc/netplan/01-netcfg.yaml", True),
    ("network", "etc/systemd/network/10-eth.network", True),
    ("network", "etc/sysconfig/network/ifroute-eth0", True),
    ("network", "usr/sbin/NetworkManager", True),  # a stack installed or gone
    ("network", "etc/systemd/system/multi-user.target.wants/NetworkManager.service", True),
    ("network", "etc/resolv.conf", True),
    ("network", "etc/issue", False),
    ("hostname", "etc/hosts", True),
    ("hostname", "etc/hostname", True),
    ("hostname", "etc/HOSTNAME", True),
    ("hostname", "etc/sysconfig/network", True),
    ("hostname", "etc/hosts.deny", False),
    ("identity", "/etc/ssh/sshd_config", True),
    ("identity", "etc/ssh/sshd_config.d/50-keys.conf", True),
    ("identity", "etc/ssh/ssh_config", False),
    ("kernel", "lib/modules/6.1.0-13-amd64/modules.dep", True),
    ("kernel", "etc/initramfs-tools/modules", True),
    ("kernel", "etc/dracut.conf.d/xen.conf", True),
    ("fstab", "etc/fstab", True),
    ("fstab", "etc/fstab.d/x", False),
    ("bootloader", "etc/initramfs-tools/conf.d/resume", True),
    ("bootloader", "etc/default/grub", True),
    ("issue", "etc/issue", True),
    ("issue", "etc/issue.net", False),
    ("systemimager", "etc/systemimager/IMAGE_LAST_SYNCED_TO", False),  # rerun always, not by watches
]


@pytest.mark.parametrize("name,path,watched", WATCHED)
def test_each_fixup_watches_its_inputs(name, path, watched):
    assert by_name(name).watching(path) is watched


def test_watches_are_data():
    assert "etc/fstab" in by_name("fstab").watches
    assert by_name("systemimager").watches == ()
