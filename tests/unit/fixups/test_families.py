"""Every fixup on a realistic tree of each family/release; idempotence for all of them."""

import os

import pytest

from si_xen.fixups import run_all
from tests.unit.fixups.conftest import DHCP, STATIC
from tests.unit.fixups.trees import TREES, entry_facts, snapshot, unrecorded


def read(root, path):
    with open(os.path.join(root, path)) as f:
        return f.read()


def quiet(_msg):
    pass


@pytest.mark.parametrize("name", sorted(TREES))
@pytest.mark.parametrize("spec", [STATIC, DHCP], ids=["static", "dhcp"])
def test_idempotent(tree, name, spec):
    root = tree(name)
    facts = entry_facts(root)
    first = run_all(root, spec, log=quiet)
    assert any(ch for _, ch in first)
    assert unrecorded(facts, entry_facts(root), set().union(*(r.touched for r in first))) == set(), \
        "every entry a fixup adds, changes or removes is one it recorded (RecordingGuest)"
    before = snapshot(root)
    second = run_all(root, spec, log=quiet)
    assert [c for c in second if c[1]] == []
    assert snapshot(root) == before


@pytest.mark.parametrize("name", sorted(TREES))
def test_common_results(tree, name):
    root = tree(name)
    run_all(root, STATIC, log=quiet)
    hosts = read(root, "etc/hosts")
    assert "192.168.50.10\tvm1.example.org vm1" in hosts
    assert "golden01" not in hosts and "10.1.2.3" not in hosts
    assert "nfs01" in hosts  # the rest of the admin's hosts file survives
    assert read(root, "etc/resolv.conf") == "search example.org\nnameserver 192.168.50.1\nnameserver 9.9.9.9\n"
    assert read(root, "etc/systemimager/IMAGE_LAST_SYNCED_TO") == "golden01\n"
    if os.path.exists(os.path.join(root, "etc/fstab")):
        fstab = read(root, "etc/fstab")
        assert "/dev/xvda2\t/\text4\terrors=remount-ro\t0\t1" in fstab
        assert "/dev/xvda1\tnone\tswap" in fstab
        assert "sda" not in fstab and "UUID=" not in fstab and "LABEL=" not in fstab and "cdrom" not in fstab
    for d, _, files in os.walk(os.path.join(root, "etc")):
        for f in files:
            p = os.path.join(d, f)
            if not os.path.islink(p):
                text = open(p, errors="replace").read()
                assert "10.1.2.3" not in text, p  # the golden client's address is gone everywhere
                assert "00:1a:64:aa:bb:cc" not in text.lower(), p
    assert not os.path.exists(os.path.join(root, "etc/ssh/ssh_host_key"))  # SSH-1 key: removed
    for priv in (p for p in TREES[name] if p.startswith("etc/ssh/ssh_host_") and p.endswith("_key") and p.count("_") > 2):
        assert "golden" not in read(root, priv) and "golden" not in read(root, priv + ".pub")
        assert "si-xen:root@vm1.example.org" in read(root, priv + ".pub")
        assert os.stat(os.path.join(root, priv)).st_mode & 0o777 == 0o600


EXPECT = {  # tree -> {file: [substrings]}; a leading "!" means "must not contain"
    "debian4": {"etc/network/interfaces": ["auto eth0\niface eth0 inet static", "address 192.168.50.10", "gateway 192.168.50.1"],
                "etc/inittab": ["\n1:2345:respawn:/sbin/getty 38400 hvc0\n", "#2:23:respawn", "#T1:23", "!\n2:23"],
                "etc/securetty": ["hvc0\n"], "boot/grub/menu.lst": ["root=/dev/xvda2", "console=hvc0"],
                "etc/hostname": ["vm1\n"], "etc/mailname": ["vm1.example.org\n"]},
    "debian12": {"etc/network/interfaces": ["auto enX0\niface enX0 inet static", "!eth0"],
                 "boot/grub/grub.cfg": ["root=/dev/xvda2 ro quiet console=hvc0"], "etc/default/grub": ['GRUB_CMDLINE_LINUX="console=hvc0"'],
                 "etc/machine-id": ["!4f1d"], "etc/issue": ["IPv4 address of enX0: 192.168.50.10"],
                 "etc/initramfs-tools/conf.d/resume": ["RESUME=/dev/xvda1"]},
    "ubuntu710": {"etc/event.d/hvc0": ["exec /sbin/getty 38400 hvc0"], "boot/grub/menu.lst": ["root=/dev/xvda2"],
                  "etc/udev/rules.d/85-hwclock.rules": ['#KERNEL=="rtc", ACTION=="add", RUN+="set_hwclock"']},
    "ubuntu1004": {"etc/init/hvc0.conf": ["exec /sbin/getty -8 38400 hvc0"], "etc/init/hwclock.conf.disabled": ["hwclock"],
                   "etc/udev/rules.d/85-hwclock.rules": ['#ACTION=="add", SUBSYSTEM=="rtc"']},
    "ubuntu1804": {"etc/netplan/01-netcfg.yaml": ["    eth0:\n", "addresses: [192.168.50.10/24]", "via: 192.168.50.1",
                                                  "renderer: networkd", "!macaddress"]},
    "ubuntu2404": {"etc/netplan/01-netcfg.yaml": ["    enX0:\n", "nameservers:\n        addresses: [192.168.50.1, 9.9.9.9]"]},
    "centos5": {"etc/sysconfig/network-scripts/ifcfg-eth0": ["IPADDR=192.168.50.10", "!HWADDR"],
                "etc/sysconfig/network": ["HOSTNAME=vm1.example.org", "GATEWAY=192.168.50.1"],
                "etc/inittab": ["\n1:2345:respawn:/sbin/mingetty hvc0\n", "#2:2345"], "boot/grub/grub.conf": ["root=/dev/xvda2"],
                "etc/fstab": ["tmpfs /dev/shm tmpfs"]},
    "centos6": {"etc/sysconfig/init": ["ACTIVE_CONSOLES=/dev/hvc0"], "etc/sysconfig/network-scripts/ifcfg-eth0": ["DEVICE=eth0"]},
    "centos7": {"etc/hostname": ["vm1.example.org\n"], "etc/default/grub": ["rhgb quiet console=hvc0", "!console=tty0"],
                "boot/grub2/grub.cfg": ["root=/dev/xvda2"]},
    "rocky8": {"etc/sysconfig/network-scripts/ifcfg-eth0": ["IPADDR=192.168.50.10"],
               "boot/loader/entries/abc-4.18.0.conf": ["root=/dev/xvda2", "resume=/dev/xvda1", "console=hvc0"],
               "boot/grub2/grubenv": ["kernelopts=root=/dev/xvda2 ro resume=/dev/xvda1 console=hvc0\n"]},
    "alma9": {"etc/NetworkManager/system-connections/si-xen-enX0.nmconnection":
              ["interface-name=enX0", "method=manual", "address1=192.168.50.10/24,192.168.50.1", "dns=192.168.50.1;9.9.9.9;"]},
    "opensuse103": {"etc/HOSTNAME": ["vm1.example.org\n"], "etc/sysconfig/network/ifcfg-eth0": ["IPADDR='192.168.50.10/24'"],
                    "etc/sysconfig/network/routes": ["default 192.168.50.1 - -"], "boot/grub/menu.lst": ["resume=/dev/xvda1"]},
    "leap15": {"etc/sysconfig/network/ifcfg-eth0": ["STARTMODE='auto'", "!LLADDR"], "etc/HOSTNAME": ["vm1.example.org"],
               "etc/sysconfig/network/config": ['NETCONFIG_DNS_STATIC_SERVERS="192.168.50.1 9.9.9.9"'],
               "etc/default/grub": ["resume=/dev/xvda1", 'GRUB_CMDLINE_LINUX="console=hvc0"']},
    "unknown": {"etc/inittab": ["getty 38400 hvc0"], "etc/hostname": ["vm1\n"]},
}
GONE = {
    "debian4": ["etc/rcS.d/S11hwclock.sh", "etc/rcS.d/S18hwclockfirst.sh", "etc/udev/rules.d/z25_persistent-net.rules",
                "var/lib/dhcp3/dhclient.eth0.leases", "var/lib/urandom/random-seed"],
    "debian12": ["etc/systemd/system/getty.target.wants/getty@tty1.service", "var/lib/systemd/random-seed"],
    "ubuntu710": ["etc/event.d/tty1", "etc/event.d/tty6", "etc/udev/rules.d/z25_persistent-net.rules", "etc/rcS.d/S11hwclock.sh"],
    "ubuntu1004": ["etc/init/tty1.conf", "etc/init/hwclock.conf", "etc/udev/rules.d/70-persistent-net.rules"],
    "ubuntu1804": ["etc/netplan/50-cloud-init.yaml"],
    "centos5": ["var/lib/random-seed", "var/lib/dhclient/dhclient-eth0.leases"],
    "rocky8": ["etc/sysconfig/network-scripts/ifcfg-ens3"],
    "alma9": ["etc/NetworkManager/system-connections/ens3.nmconnection"],
    "opensuse103": ["etc/sysconfig/network/ifcfg-eth-id-00:1a:64:aa:bb:cc", "etc/udev/rules.d/30-net_persistent_names.rules",
                    "etc/init.d/boot.d/S07boot.clock"],
}


@pytest.mark.parametrize("name", sorted(EXPECT))
def test_family_results(tree, name):
    root = tree(name)
    run_all(root, STATIC, log=quiet)
    for path, wants in EXPECT[name].items():
        text = read(root, path)
        for w in wants:
            assert (w[1:] not in text) if w.startswith("!") else (w in text), (path, w, text)
    if name == "rocky8":
        assert len(read(root, "boot/grub2/grubenv")) == 1024  # grub refuses a resized env block
    for path in GONE.get(name, []):
        assert not os.path.lexists(os.path.join(root, path)), path


def test_systemd_console_and_hwclock(tree):
    root = tree("debian12")
    run_all(root, STATIC, log=quiet)
    wants = os.path.join(root, "etc/systemd/system/getty.target.wants")
    assert os.listdir(wants) == ["serial-getty@hvc0.service"]
    assert os.readlink(os.path.join(root, "etc/systemd/system/getty-static.service")) == "/dev/null"
    assert os.readlink(os.path.join(wants, "serial-getty@hvc0.service")) == "/lib/systemd/system/serial-getty@.service"
    # systemd's 90 s wait for the console device never cuts a slow boot's getty (issue 25)
    assert "JobRunningTimeoutSec=infinity" in read(root, "etc/systemd/system/dev-hvc0.device.d/si-xen-console.conf")
    assert os.readlink(os.path.join(root, "etc/systemd/system/hwclock.service")) == "/dev/null"


def test_dhcp_variants(tree):
    for name, path, want in (("debian12", "etc/network/interfaces", "iface enX0 inet dhcp"),
                             ("ubuntu2404", "etc/netplan/01-netcfg.yaml", "dhcp4: true"),
                             ("centos7", "etc/sysconfig/network-scripts/ifcfg-eth0", "BOOTPROTO=dhcp"),
                             ("alma9", "etc/NetworkManager/system-connections/si-xen-enX0.nmconnection", "method=auto"),
                             ("leap15", "etc/sysconfig/network/ifcfg-eth0", "BOOTPROTO='dhcp'")):
        root = tree(name)
        run_all(root, DHCP, log=quiet)
        assert want in read(root, path), name
        assert "127.0.1.1\tvm2" in read(root, "etc/hosts")
    assert "\\4{eth0}" in read(root, "etc/issue")  # leap15, the last one


def test_xen_tools_mode_writes_resolv_conf_old(tree):
    root = tree("ubuntu2404")  # resolv.conf is a link into the guest's /run: replaced, not followed
    run_all(root, STATIC, only="network", log=quiet, xen_tools=True)
    assert read(root, "etc/resolv.conf.old").endswith("nameserver 9.9.9.9\n")
    assert os.path.islink(os.path.join(root, "etc/resolv.conf"))


def test_unknown_os_warns(tree):
    root = tree("unknown")
    msgs = []
    run_all(root, STATIC, log=msgs.append)
    assert any(m.startswith("WARNING: unknown OS") for m in msgs)
    assert any(m.startswith("WARNING: network:") and "skipped" in m for m in msgs)
