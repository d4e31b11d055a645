"""The real xen-create-image (xen-tools 4.9.2) running our hook set on copied images."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import time

import pytest

from si_xen.cli import xenhooks
from tests.conftest import TEST_IMAGE, need_tools, require
from tests.unit.fixups.trees import build

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMAGES = os.path.dirname(TEST_IMAGE)


def sh(*argv, **kw):
    return subprocess.run(list(argv), capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def xen_tools():
    """Our hook set in the real /usr/share/xen-tools and /etc/xen-tools, for this module only."""
    require(os.geteuid() == 0, "needs root")
    need_tools("xen-create-image", "mkfs.ext4", "losetup", "mount")
    require(os.path.exists("/dev/loop-control"), "needs loop devices")
    assert xenhooks.main(["install-xen-tools"]) == 0
    try:
        yield
    finally:
        assert xenhooks.main(["uninstall-xen-tools"]) == 0
    assert not os.path.exists("/usr/share/xen-tools/systemimager.d")
    assert not os.path.exists("/etc/xen-tools/role.d/systemimager")


@pytest.fixture(scope="module")
def debian12_image():
    require(os.geteuid() == 0, "needs root")
    dest = f"{IMAGES}/debian12"
    deadline = time.time() + 900
    while not os.path.exists(f"{dest}/.si-xen-test-image") and glob.glob(f"{dest}.tmp.*") and time.time() < deadline:
        time.sleep(5)  # another process is building it: the script is idempotent, wait for it
    r = sh(os.path.join(REPO, "tests/images/mkimage-debian12"), dest, timeout=1800)
    require(r.returncode == 0, f"cannot build the Debian 12 test image: {r.stderr.strip()[-300:]}")
    return dest


@pytest.fixture
def ubuntu710_image(tmp_path):
    root = build(tmp_path / "ubuntu7_10", "ubuntu710")
    os.makedirs(os.path.join(root, "bin"))
    for exe in ("bin/ls", "bin/cp"):  # xen-create-image insists on an executable $PREFIX/bin/ls
        with open(os.path.join(root, exe), "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(os.path.join(root, exe), 0o755)
    return root


@pytest.fixture
def create(tmp_path):
    """Run xen-create-image; yield a reader of the resulting root filesystem (mounted read-only)."""
    made = []

    def run(image, hostname, *net, extra=()):
        out = tmp_path / "cfg"
        out.mkdir(exist_ok=True)
        made.append(hostname)
        # xen-tools.conf names the dom0's `uname -r` kernel, absent in a container: name real files
        kernel = sorted(glob.glob(f"{IMAGES}/debian12/boot/vmlinuz-*"))
        initrd = sorted(glob.glob(f"{IMAGES}/debian12/boot/initrd.img-*"))
        require(bool(kernel and initrd), "no kernel/initrd file to name with --kernel/--initrd")
        argv = ["xen-create-image", "--dist=systemimager", "--install-method=copy", f"--install-source={image}",
                f"--hostname={hostname}", f"--dir={tmp_path}", "--size=2G", "--swap=128M", "--memory=512M",
                f"--output={out}", "--noboot", f"--kernel={kernel[0]}", f"--initrd={initrd[0]}", "--genpass=0",
                "--mirror=http://127.0.0.1/unused", "--verbose", *net, *extra]
        r = sh(*argv, timeout=900, env={**os.environ, "LC_ALL": "C"})
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
        assert os.path.exists(out / f"{hostname}.cfg")
        mnt = tempfile.mkdtemp(prefix="si-xen-it.")
        disk = f"{tmp_path}/domains/{hostname}/disk.img"
        subprocess.run(["mount", "-o", "ro,loop", disk, mnt], check=True)
        try:
            return r.stdout, _snapshot(mnt)
        finally:
            subprocess.run(["umount", mnt], check=True)
            os.rmdir(mnt)
            assert disk not in sh("losetup", "-a").stdout  # autoclear detached the loop device

    yield run
    for h in made:
        for p in (f"/var/log/xen-tools/{h}.log",):
            if os.path.exists(p):
                os.unlink(p)
    assert str(tmp_path) not in open("/proc/mounts").read()


def _snapshot(root):
    """The guest files the assertions read (text) and links, read while mounted."""
    out = {}
    for d, dirs, files in os.walk(root):
        rel = os.path.relpath(d, root)
        if rel.split(os.sep)[0] in ("usr", "var", "proc", "sys", "dev", "run") and not rel.startswith("var/lib"):
            continue
        for n in dirs + files:
            p = os.path.join(d, n)
            key = os.path.normpath(os.path.join(rel, n))
            if os.path.islink(p):
                out[key] = ("link", os.readlink(p))
            elif os.path.isfile(p) and os.path.getsize(p) < 200_000 and key.startswith(("etc/", "boot/grub")):
                with open(p, errors="replace") as f:
                    out[key] = f.read()
            else:
                out[key] = None
    return out


def test_debian12_static(xen_tools, debian12_image, create):
    hosts_before = open("/etc/hosts").read()
    log, g = create(debian12_image, "sixen-it-deb12", "--ip=192.168.77.10", "--netmask=255.255.255.0",
                    "--gateway=192.168.77.1", "--nameserver=192.168.77.1")
    assert "Running hook 90-make-fstab" in log
    assert "/dev/xvda2\t/\text4\tnoatime,nodiratime,errors=remount-ro\t0\t1" in g["etc/fstab"]
    assert "UUID=" not in g["etc/fstab"] and "sda" not in g["etc/fstab"]
    assert "iface enX0 inet static\n    address 192.168.77.10" in g["etc/network/interfaces"]
    assert "10.1.2.3" not in g["etc/network/interfaces"]
    assert g["etc/resolv.conf"] == "nameserver 192.168.77.1\n"  # our resolv.conf.old, restored by xen-tools
    assert "etc/resolv.conf.old" not in g
    assert g["etc/hostname"] == "sixen-it-deb12\n" and "192.168.77.10\tsixen-it-deb12" in g["etc/hosts"]
    assert g["etc/systemimager/IMAGE_LAST_SYNCED_TO"] == "debian12\n"
    assert g["etc/machine-id"] == ""
    assert g["etc/systemd/system/getty.target.wants/serial-getty@hvc0.service"][0] == "link"
    assert "IPv4 address of enX0: 192.168.77.10" in g["etc/issue"]
    with open(f"{debian12_image}/etc/ssh/ssh_host_ed25519_key.pub") as f:
        assert f.read().split()[1] != g["etc/ssh/ssh_host_ed25519_key.pub"].split()[1]
    assert open("/etc/hosts").read() == hosts_before  # unlike stock 50-setup-hostname, the dom0 is untouched


def test_ubuntu710_dhcp(xen_tools, debian12_image, ubuntu710_image, create):
    modules = glob.glob(f"{debian12_image}/lib/modules/*")[0]
    log, g = create(ubuntu710_image, "sixen-it-gutsy", "--dhcp", extra=[f"--modules={modules}"])
    assert "exec /sbin/getty 38400 hvc0" in g["etc/event.d/hvc0"]
    assert "etc/event.d/tty1" not in g and "etc/udev/rules.d/z25_persistent-net.rules" not in g
    assert '#KERNEL=="rtc", ACTION=="add", RUN+="set_hwclock"' in g["etc/udev/rules.d/85-hwclock.rules"]
    assert "etc/rcS.d/S11hwclock.sh" not in g
    assert "auto eth0\niface eth0 inet dhcp" in g["etc/network/interfaces"]
    assert "root=/dev/xvda2" in g["boot/grub/menu.lst"] and "console=hvc0" in g["boot/grub/menu.lst"]
    assert f"lib/modules/{os.path.basename(modules)}" in g  # the supplied kernel's modules were copied
    assert g["etc/hostname"] == "sixen-it-gutsy\n"
    assert g["etc/systemimager/IMAGE_LAST_SYNCED_TO"] == "ubuntu7_10\n"


def test_role_script_runs_all_fixups(xen_tools, ubuntu710_image, tmp_path):
    """The role script (for any --dist) given the hook environment by hand, as xen-tools would."""
    env = {"PATH": os.environ["PATH"], "hostname": "rolevm", "dhcp": "1", "install_source": ubuntu710_image}
    r = sh("/etc/xen-tools/role.d/systemimager", ubuntu710_image, env=env)
    assert r.returncode == 0, r.stderr
    assert open(f"{ubuntu710_image}/etc/hostname").read() == "rolevm\n"
    assert sys.executable in open("/etc/xen-tools/role.d/systemimager").readline()
