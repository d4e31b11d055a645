"""Small guest trees as real releases ship the files the fixups touch (golden client: golden01,
10.1.2.3 on eth0/ens3, disks on sda), built under tmp_path. ``L(target)`` is a symlink."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class L:
    target: str


KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\ngolden\n-----END OPENSSH PRIVATE KEY-----\n"


def keys(*types: str) -> dict:
    out = {}
    for t in types:
        out[f"etc/ssh/ssh_host_{t}_key"] = KEY
        out[f"etc/ssh/ssh_host_{t}_key.pub"] = f"ssh-{t} AAAAgolden{t} root@golden01\n"
    return out


DEB_INITTAB = """# /etc/inittab: init(8) configuration.
id:2:initdefault:
si::sysinit:/etc/init.d/rcS
~~:S:wait:/sbin/sulogin
l2:2:wait:/etc/init.d/rc 2
ca:12345:ctrlaltdel:/sbin/shutdown -t1 -a -r now
1:2345:respawn:/sbin/getty 38400 tty1
2:23:respawn:/sbin/getty 38400 tty2
3:23:respawn:/sbin/getty 38400 tty3
4:23:respawn:/sbin/getty 38400 tty4
5:23:respawn:/sbin/getty 38400 tty5
6:23:respawn:/sbin/getty 38400 tty6
#T0:23:respawn:/sbin/getty -L ttyS0 9600 vt100
T1:23:respawn:/sbin/getty -L ttyS1 9600 vt100
"""
RH_INITTAB = """id:3:initdefault:
si::sysinit:/etc/rc.d/rc.sysinit
l3:3:wait:/etc/rc.d/rc 3
1:2345:respawn:/sbin/mingetty tty1
2:2345:respawn:/sbin/mingetty tty2
3:2345:respawn:/sbin/mingetty tty3
4:2345:respawn:/sbin/mingetty tty4
5:2345:respawn:/sbin/mingetty tty5
6:2345:respawn:/sbin/mingetty tty6
x:5:respawn:/etc/X11/prefdm -nodaemon
"""
HOSTS = "127.0.0.1\tlocalhost\n127.0.1.1\tgolden01.example.com golden01\n10.1.2.3\tgolden01.example.com golden01 loghost\n10.1.2.9\tnfs01\n"
IFACES = "auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet static\n    address 10.1.2.3\n    netmask 255.255.255.0\n    gateway 10.1.2.1\n"
PNET = 'SUBSYSTEM=="net", ACTION=="add", DRIVERS=="?*", ATTR{address}=="00:1a:64:aa:bb:cc", ATTR{type}=="1", KERNEL=="eth*", NAME="eth0"\n'
UDEV_RTC_710 = '# Set the system time from the hardware clock\nKERNEL=="rtc", ACTION=="add", RUN+="set_hwclock"\n'
UDEV_RTC_1004 = '# Set the System Time from the Hardware Clock\nACTION=="add", SUBSYSTEM=="rtc", KERNEL=="rtc0", RUN+="hwclock-set $root/$name"\n'
UPSTART_TTY = "# tty{n} - getty\n#\n# This service maintains a getty on tty{n}\n\nstart on runlevel 2\nstart on runlevel 3\n\nstop on runlevel 0\n\nrespawn\nexec /sbin/getty 38400 tty{n}\n"
UPSTART_CONF = "# tty{n} - getty\n\nstart on runlevel [2345]\nstop on runlevel [!2345]\n\nrespawn\nexec /sbin/getty -8 38400 tty{n}\n"
SERIAL_GETTY = "[Unit]\nDescription=Serial Getty on %I\n[Service]\nExecStart=-/sbin/agetty -o '-p -- \\\\u' --keep-baud 115200,57600,38400,9600 %I $TERM\n"
MENU_LST = "default 0\ntimeout 5\ntitle Linux\nroot (hd0,0)\nkernel /boot/vmlinuz-{v} root={root} ro quiet splash\ninitrd /boot/initrd.img-{v}\n"
GRUB_CFG = "menuentry 'Linux' {{\n\tsearch --no-floppy --fs-uuid --set=root 0b7c2f7e\n\tlinux\t/boot/vmlinuz-{v} root={root} ro  quiet\n\tinitrd\t/boot/initrd.img-{v}\n}}\n"
OS = 'NAME="{n}"\nVERSION_ID="{v}"\nID={i}\nID_LIKE="{like}"\nPRETTY_NAME="{n} {v}"\n'
DEB_FSTAB = "proc /proc proc defaults 0 0\n/dev/sda1 / ext3 defaults,errors=remount-ro 0 1\n/dev/sda5 none swap sw 0 0\n/dev/hdc /media/cdrom0 udf,iso9660 user,noauto 0 0\nnfs01:/home /home nfs defaults 0 0\n"
MERGED = {"lib": L("usr/lib"), "sbin": L("usr/sbin"), "bin": L("usr/bin")}


def _systemd(lib: str = "lib") -> dict:
    return {f"{lib}/systemd/systemd": "", f"{lib}/systemd/system/serial-getty@.service": SERIAL_GETTY,
            "etc/systemd/system/getty.target.wants/getty@tty1.service": L(f"/{lib}/systemd/system/getty@.service"),
            f"{lib}/systemd/system/getty-static.service": "[Service]\nExecStart=systemctl --no-block start getty@tty2.service\n",
            f"{lib}/systemd/system/getty.target.wants/getty-static.service": L("../getty-static.service"),
            "etc/machine-id": "4f1d2e3c4b5a69788796a5b4c3d2e1f0\n", "etc/issue": "Linux \\n \\l\n\n"}


def _deb(release_files: dict) -> dict:
    base = {"etc/hostname": "golden01\n", "etc/hosts": HOSTS, "etc/mailname": "golden01.example.com\n",
            "etc/network/interfaces": IFACES, "sbin/ifup": "", "etc/fstab": DEB_FSTAB,
            "etc/resolv.conf": "nameserver 10.1.2.1\n"}
    base.update(release_files)
    return base


TREES: dict[str, dict] = {
    "debian4": _deb({
        "etc/debian_version": "4.0\n", "etc/inittab": DEB_INITTAB, "etc/securetty": "console\ntty1\n",
        "etc/init.d/hwclock.sh": "", "etc/rcS.d/S11hwclock.sh": L("../init.d/hwclock.sh"),
        "etc/rcS.d/S18hwclockfirst.sh": L("../init.d/hwclockfirst.sh"), "etc/rc0.d/K25hwclock.sh": L("../init.d/hwclock.sh"),
        "etc/udev/rules.d/z25_persistent-net.rules": PNET, "boot/grub/menu.lst": MENU_LST.format(v="2.6.18-6-xen-686", root="/dev/sda1"),
        "var/lib/dhcp3/dhclient.eth0.leases": "lease {}\n", "var/lib/urandom/random-seed": "x", **keys("rsa", "dsa")}),
    "debian12": _deb({
        **MERGED, **_systemd("usr/lib"), "usr/lib/os-release": OS.format(n="Debian GNU/Linux", v="12", i="debian", like=""),
        "etc/os-release": L("../usr/lib/os-release"), "usr/sbin/ifup": "",
        "usr/lib/systemd/system/hwclock.service": L("/dev/null"), "etc/rcS.d/S01hwclock.sh": L("../init.d/hwclock.sh"),
        "etc/default/grub": 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet"\nGRUB_CMDLINE_LINUX=""\n',
        "boot/grub/grub.cfg": GRUB_CFG.format(v="6.1.0-18-amd64", root="UUID=0b7c2f7e-1d2a-4c5e-9f00-3a1b2c3d4e5f"),
        "boot/config-6.1.0-18-amd64": "CONFIG_XEN_BLKDEV_FRONTEND=m\n",
        "etc/fstab": "UUID=0b7c2f7e-1d2a-4c5e-9f00-3a1b2c3d4e5f / ext4 errors=remount-ro 0 1\n/dev/sda5 none swap sw 0 0\n",
        "etc/initramfs-tools/conf.d/resume": "RESUME=UUID=6f1e\n",
        "var/lib/systemd/random-seed": "x", "var/lib/dhcp/dhclient.eth0.leases": "lease {}\n",
        **keys("rsa", "ecdsa", "ed25519")}),
    "ubuntu710": _deb({
        "etc/lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=7.10\nDISTRIB_CODENAME=gutsy\nDISTRIB_DESCRIPTION=\"Ubuntu 7.10\"\n",
        "etc/debian_version": "lenny/sid\n", "sbin/initctl": "",
        **{f"etc/event.d/tty{n}": UPSTART_TTY.format(n=n) for n in range(1, 7)},
        "etc/event.d/rc-default": "start on stopped rcS\n",
        "etc/udev/rules.d/z25_persistent-net.rules": PNET, "etc/udev/rules.d/85-hwclock.rules": UDEV_RTC_710,
        "etc/rcS.d/S11hwclock.sh": L("../init.d/hwclock.sh"), "etc/rc6.d/K25hwclock.sh": L("../init.d/hwclock.sh"),
        "boot/grub/menu.lst": MENU_LST.format(v="2.6.22-14-xen", root="UUID=1e2d"),
        "var/lib/dhcp3/dhclient.eth0.leases": "lease {}\n", **keys("rsa", "dsa")}),
    "ubuntu1004": _deb({
        "etc/lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=10.04\nDISTRIB_DESCRIPTION=\"Ubuntu 10.04.4 LTS\"\n",
        "sbin/initctl": "", **{f"etc/init/tty{n}.conf": UPSTART_CONF.format(n=n) for n in range(1, 7)},
        "etc/init/hwclock.conf": "start on starting mountall\nexec hwclock --systz\n", "etc/init/hwclock-save.conf": "exec hwclock --systohc\n",
        "lib/udev/rules.d/85-hwclock.rules": UDEV_RTC_1004, "etc/udev/rules.d/70-persistent-net.rules": PNET,
        "boot/grub/grub.cfg": GRUB_CFG.format(v="2.6.32-38-server", root="UUID=1e2d"), **keys("rsa", "dsa")}),
    "ubuntu1804": _deb({
        **_systemd(), "etc/os-release": OS.format(n="Ubuntu", v="18.04", i="ubuntu", like="debian"),
        "usr/sbin/netplan": "", "lib/systemd/systemd-networkd": "",
        "etc/netplan/50-cloud-init.yaml": "network:\n    ethernets:\n        ens3:\n            dhcp4: true\n            match:\n                macaddress: 52:54:00:12:34:56\n            set-name: ens3\n    version: 2\n",
        **keys("rsa", "ecdsa", "ed25519")}),
    "ubuntu2404": _deb({
        **MERGED, **_systemd("usr/lib"), "etc/os-release": OS.format(n="Ubuntu", v="24.04", i="ubuntu", like="debian"),
        "usr/sbin/netplan": "", "usr/lib/systemd/systemd-networkd": "",
        "etc/netplan/50-cloud-init.yaml": "network:\n  version: 2\n  ethernets:\n    ens3:\n      addresses: [10.1.2.3/24]\n      routes:\n        - to: default\n          via: 10.1.2.1\n",
        "etc/resolv.conf": L("../run/systemd/resolve/stub-resolv.conf"), **keys("rsa", "ecdsa", "ed25519"),
        # a server install (subiquity) leaves cloud-init in: the cloudinit fixup's family
        "usr/bin/cloud-init": "#!/usr/bin/python3\n", "etc/cloud/cloud.cfg": "users: [default]\n",
        "etc/cloud/cloud.cfg.d/90_dpkg.cfg": "datasource_list: [ NoCloud, ConfigDrive, None ]\n"}),
}

_RH = {"etc/hosts": HOSTS, "etc/sysconfig/network-scripts/ifcfg-lo": "DEVICE=lo\nIPADDR=127.0.0.1\n",
       "etc/sysconfig/network-scripts/ifup-eth": "", "etc/resolv.conf": "nameserver 10.1.2.1\n"}
IFCFG_ETH0 = "DEVICE=eth0\nBOOTPROTO=static\nHWADDR=00:1A:64:AA:BB:CC\nIPADDR=10.1.2.3\nNETMASK=255.255.255.0\nONBOOT=yes\n"
RH_NET = "NETWORKING=yes\nHOSTNAME=golden01.example.com\nGATEWAY=10.1.2.1\n"
GRUB_CONF = "default=0\ntitle CentOS ({v})\n\troot (hd0,0)\n\tkernel /vmlinuz-{v} ro root={root} rhgb quiet\n\tinitrd /initrd-{v}.img\n"
TREES.update({
    "centos5": {**_RH, "etc/redhat-release": "CentOS release 5.11 (Final)\n", "etc/inittab": RH_INITTAB,
                "etc/securetty": "console\nvc/1\ntty1\n", "etc/sysconfig/network": RH_NET,
                "etc/sysconfig/network-scripts/ifcfg-eth0": IFCFG_ETH0,
                "boot/grub/grub.conf": GRUB_CONF.format(v="2.6.18-398.el5xen", root="LABEL=/"), "etc/grub.conf": L("../boot/grub/grub.conf"),
                "etc/fstab": "LABEL=/ / ext3 defaults 1 1\ntmpfs /dev/shm tmpfs defaults 0 0\nLABEL=SWAP-sda2 swap swap defaults 0 0\n",
                "var/lib/dhclient/dhclient-eth0.leases": "lease {}\n", "var/lib/random-seed": "x",
                **keys("rsa", "dsa"), "etc/ssh/ssh_host_key": KEY, "etc/ssh/ssh_host_key.pub": "1024 35 123 root@golden01\n"},
    "centos6": {**_RH, "etc/redhat-release": "CentOS release 6.10 (Final)\n", "etc/centos-release": "CentOS release 6.10 (Final)\n",
                "etc/inittab": "id:3:initdefault:\n", "sbin/initctl": "", "etc/sysconfig/network": RH_NET,
                "etc/init/tty.conf": "instance $TTY\nexec /sbin/mingetty $TTY\n", "etc/init/start-ttys.conf": "start on stopped rc\n",
                "etc/sysconfig/init": "BOOTUP=color\nACTIVE_CONSOLES=/dev/tty[1-6]\n",
                "etc/udev/rules.d/70-persistent-net.rules": PNET, "etc/sysconfig/network-scripts/ifcfg-eth0": IFCFG_ETH0,
                "boot/grub/grub.conf": GRUB_CONF.format(v="2.6.32-754.el6.x86_64", root="UUID=9a8b"), **keys("rsa", "dsa")},
    "centos7": {**_RH, **_systemd("usr/lib"), "etc/os-release": OS.format(n="CentOS Linux", v="7", i="centos", like="rhel fedora"),
                "etc/hostname": "golden01.example.com\n", "etc/sysconfig/network": "# Created by anaconda\n",
                "etc/sysconfig/network-scripts/ifcfg-eth0": IFCFG_ETH0 + "UUID=5fb06bd0-0bb0-7ffb-45f1-d6edd65f3e03\nGATEWAY=10.1.2.1\n",
                "etc/default/grub": 'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="crashkernel=auto rd.lvm.lv=centos/root rhgb quiet console=tty0"\n',
                "boot/grub2/grub.cfg": "menuentry 'CentOS' {\n\tlinux16 /vmlinuz-3.10.0-1160.el7.x86_64 root=/dev/mapper/centos-root ro crashkernel=auto\n}\n",
                **keys("rsa", "ecdsa", "ed25519")},
    "rocky8": {**_RH, **_systemd("usr/lib"), "etc/os-release": OS.format(n="Rocky Linux", v="8.9", i="rocky", like="rhel centos fedora"),
               "etc/hostname": "golden01.example.com\n", "usr/sbin/NetworkManager": "",
               "etc/sysconfig/network-scripts/ifcfg-ens3": IFCFG_ETH0.replace("eth0", "ens3"),
               "boot/loader/entries/abc-4.18.0.conf": "title Rocky\nlinux /vmlinuz-4.18.0\noptions root=/dev/mapper/rl-root ro resume=/dev/mapper/rl-swap\n",
               "boot/grub2/grubenv": ("saved_entry=abc\nkernelopts=root=/dev/mapper/rl-root ro resume=/dev/mapper/rl-swap\n").ljust(1024, "#"),
               **keys("rsa", "ecdsa", "ed25519")},
    "alma9": {**_RH, **_systemd("usr/lib"), "etc/os-release": OS.format(n="AlmaLinux", v="9.3", i="almalinux", like="rhel centos fedora"),
              "etc/hostname": "golden01.example.com\n", "usr/sbin/NetworkManager": "",
              "etc/NetworkManager/system-connections/ens3.nmconnection":
                  "[connection]\nid=ens3\ntype=ethernet\ninterface-name=ens3\n\n[ethernet]\nmac-address=00:1A:64:AA:BB:CC\n\n[ipv4]\naddress1=10.1.2.3/24,10.1.2.1\nmethod=manual\n",
              **keys("rsa", "ecdsa", "ed25519")},
    "opensuse103": {"etc/SuSE-release": "openSUSE 10.3 (X86-64)\nVERSION = 10.3\n", "etc/HOSTNAME": "golden01.example.com\n",
                    "etc/hosts": HOSTS, "etc/inittab": RH_INITTAB, "etc/securetty": "tty1\n",
                    "etc/sysconfig/network/ifcfg-lo": "IPADDR=127.0.0.1\n",
                    "etc/sysconfig/network/ifcfg-eth-id-00:1a:64:aa:bb:cc": "BOOTPROTO='static'\nIPADDR='10.1.2.3/24'\nSTARTMODE='auto'\n",
                    "etc/sysconfig/network/routes": "default 10.1.2.1 - -\n",
                    "etc/udev/rules.d/30-net_persistent_names.rules": PNET,
                    "etc/init.d/boot.d/S07boot.clock": L("../boot.clock"),
                    "boot/grub/menu.lst": MENU_LST.format(v="2.6.22.5-31-xen", root="/dev/sda2 resume=/dev/sda1"),
                    "etc/fstab": "/dev/sda2 / ext3 acl,user_xattr 1 1\n/dev/sda1 swap swap defaults 0 0\nproc /proc proc defaults 0 0\n",
                    **keys("rsa", "dsa")},
    "leap15": {**_systemd("usr/lib"), "etc/os-release": OS.format(n="openSUSE Leap", v="15.5", i='"opensuse-leap"', like="suse opensuse"),
               "etc/hostname": "golden01.example.com\n", "etc/HOSTNAME": L("hostname"), "etc/hosts": HOSTS, "usr/sbin/wicked": "",
               "etc/sysconfig/network/ifcfg-lo": "IPADDR=127.0.0.1\n",
               "etc/sysconfig/network/ifcfg-eth0": "BOOTPROTO='static'\nIPADDR='10.1.2.3/24'\nLLADDR='00:1a:64:aa:bb:cc'\nSTARTMODE='auto'\n",
               "etc/sysconfig/network/config": 'NETCONFIG_DNS_STATIC_SERVERS=""\n',
               "etc/default/grub": 'GRUB_CMDLINE_LINUX_DEFAULT="splash=silent resume=/dev/sda1 quiet"\n',
               **keys("rsa", "ecdsa", "ed25519")},
    "unknown": {"etc/os-release": 'NAME="Gentoo"\nID=gentoo\nPRETTY_NAME="Gentoo Linux"\n', "etc/inittab": DEB_INITTAB,
                "etc/hostname": "golden01\n", "etc/hosts": HOSTS, "etc/fstab": DEB_FSTAB},
})


def build(root, name: str) -> str:
    """Write tree ``name`` under ``root`` (a pathlib dir); return its path as str."""
    return write(root, TREES[name])


def write(root, files: dict) -> str:
    """Write ``files`` (guest path: text or L(target)) under ``root``; return its path as str."""
    root = str(root)
    items = sorted(files.items(), key=lambda kv: not isinstance(kv[1], L))  # merged-/usr links first
    for path, content in items:
        host = os.path.join(root, path)
        os.makedirs(os.path.dirname(host), exist_ok=True)
        if isinstance(content, L):
            if path in MERGED:
                os.makedirs(os.path.join(root, content.target), exist_ok=True)
            os.symlink(content.target, host)
        else:
            with open(host, "w") as f:
                f.write(content)
    return root


def snapshot(root) -> dict:
    """Every entry's bytes / link target / mode, for idempotence checks."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif os.path.isfile(p):
                with open(p, "rb") as f:
                    out[rel] = (f.read(), os.stat(p).st_mode)
            else:
                out[rel] = ("dir", os.stat(p).st_mode)
    return out


def entry_facts(root) -> dict[str, tuple]:
    """Every entry's facts as a drift report compares them (directories: type, mode, owner)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            rel = "/" + os.path.relpath(p, root)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = (st.st_mode, st.st_uid, st.st_gid)
            else:
                if stat.S_ISLNK(st.st_mode):
                    body = os.readlink(p).encode()
                else:
                    with open(p, "rb") as f:
                        body = f.read()
                out[rel] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino, body)
    return out


def unrecorded(before: dict, after: dict, touched) -> set[str]:
    """The entries added, changed or removed between two entry_facts that ``touched`` (paths,
    and trees ending in /) does not name."""
    changed = {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}
    trees = tuple(t for t in touched if t.endswith("/"))
    return {p for p in changed if p not in touched and not (p + "/").startswith(trees)}
