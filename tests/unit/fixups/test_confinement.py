"""A hostile image whose files are links to the dom0's must leave the dom0 untouched."""

import os
import shutil

from si_xen.fixups import run_all
from tests.unit.fixups.conftest import STATIC
from tests.unit.fixups.trees import build, snapshot

DECOY = {"etc/hostname": "dom0\n", "etc/hosts": "127.0.0.1 localhost dom0\n", "etc/fstab": "/dev/md0 / ext4 defaults 0 1\n",
         "etc/network/interfaces": "auto eth0\niface eth0 inet static\n", "etc/resolv.conf": "nameserver 10.9.9.9\n",
         "etc/udev/rules.d/70-persistent-net.rules": "dom0 rule\n", "etc/udev/rules.d/85-hwclock.rules":
         'KERNEL=="rtc", ACTION=="add", RUN+="set_hwclock"\n', "etc/ssh/ssh_host_rsa_key": "dom0 key\n",
         "etc/ssh/ssh_host_rsa_key.pub": "ssh-rsa AAAAdom0 root@dom0\n", "etc/machine-id": "dom0dom0\n",
         "etc/mailname": "dom0.example\n", "etc/inittab": "1:2345:respawn:/sbin/getty 38400 tty1\n",
         "var/lib/dhcp/dhclient.leases": "dom0 lease\n"}


def make_decoy(d):
    for path, text in DECOY.items():
        os.makedirs(os.path.join(d, os.path.dirname(path)), exist_ok=True)
        with open(os.path.join(d, path), "w") as f:
            f.write(text)


def hostile(root, dom0):
    """debian12 tree whose sensitive files/dirs point at ``dom0`` (absolute and ../ style)."""
    build(root, "debian12")
    up = "../" * (root.count("/") + 4)
    links = {"etc/hostname": f"{dom0}/etc/hostname", "etc/hosts": f"{up}{dom0.lstrip('/')}/etc/hosts",
             "etc/fstab": f"{dom0}/etc/fstab", "etc/network/interfaces": f"{up}{dom0.lstrip('/')}/etc/network/interfaces",
             "etc/udev/rules.d": f"{dom0}/etc/udev/rules.d", "etc/ssh": f"{dom0}/etc/ssh",
             "etc/resolv.conf": f"{dom0}/etc/resolv.conf", "etc/machine-id": f"{dom0}/etc/machine-id",
             "etc/mailname": f"{dom0}/etc/mailname", "etc/inittab": f"{dom0}/etc/inittab",
             "var/lib/dhcp": f"{dom0}/var/lib/dhcp", "etc/issue": "/etc/issue"}
    for path, target in links.items():
        p = os.path.join(root, path)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        os.symlink(target, p)


def test_links_to_a_decoy_dom0_are_never_followed(tmp_path):
    dom0, root = str(tmp_path / "dom0"), str(tmp_path / "guest")
    make_decoy(dom0)
    before = snapshot(dom0)
    hostile(root, dom0)
    for _ in range(2):
        run_all(root, STATIC, log=lambda m: None)
    assert snapshot(dom0) == before
    with open(os.path.join(root, "etc/hostname")) as f:  # the guest still got its fixups
        assert f.read() == "vm1\n"
