"""The Ganeti OS definition's scripts run as Ganeti runs them (cleared environment, cwd the OS
directory, PATH=/sbin:/bin:/usr/sbin:/usr/bin, Debian's python3, API 20 variables) on real
loop devices standing for the instance's disks, with the Debian 12 test image."""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack, contextmanager

import pytest

from tests.conftest import need_tools

from .harness import host_state

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OS_DIR = os.path.join(REPO, "hooks", "ganeti", "systemimager")
PVGRUB = "/usr/lib/grub-xen/grub-x86_64-xen.bin"


@contextmanager
def loop_disk(path, mib: int):
    """A sparse file on a loop device: a block device as Ganeti's plain LVs are."""
    with open(path, "wb") as f:
        f.truncate(mib * 2**20)
    dev = subprocess.run(["losetup", "--show", "-f", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)


class Node:
    """One node's view: the SystemImager store, si-xen's config and Ganeti's environment."""

    def __init__(self, tmp, image: str):
        self.tmp = tmp
        sis = tmp / "sis"
        sis.mkdir()
        (sis / "systemimager.conf").write_text(f"DEFAULT_IMAGE_DIR = {os.path.dirname(image)}\n"
                                               f"DEFAULT_OVERRIDE_DIR = {tmp}/overrides\n")
        self.conf = tmp / "xen.conf"
        self.conf.write_text(f"[paths]\nstate_dir = {tmp}/state\nlog_dir = {tmp}/log\nlock_dir = {tmp}/lock\n"
                             f"cache_dir = {tmp}/cache\n")
        # Ganeti passes nothing else; these two only point si-xen at the test's store and paths
        self.base = {"PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "SIS_CONFDIR": str(sis), "SI_XEN_CONFIG": str(self.conf)}

    def env(self, name: str, disks: list[str], mac: str = "aa:00:00:00:00:01", **kw) -> dict[str, str]:
        e = {**self.base, "OS_API_VERSION": "20", "OS_NAME": "systemimager", "OS_VARIANT": "debian12",
             "DEBUG_LEVEL": "0", "INSTANCE_NAME": name, "INSTANCE_OS": "systemimager+debian12",
             "HYPERVISOR": "xen-pvm", "DISK_COUNT": str(len(disks)), "NIC_COUNT": "1", "NIC_0_MAC": mac,
             "NIC_0_MODE": "bridged", "NIC_0_BRIDGE": "xenbr0", "NIC_0_LINK": "xenbr0",
             "INSTANCE_HV_kernel_path": PVGRUB, "INSTANCE_HV_use_bootloader": "False", "INSTANCE_BE_maxmem": "512"}
        for i, d in enumerate(disks):
            e.update({f"DISK_{i}_PATH": d, f"DISK_{i}_ACCESS": "rw", f"DISK_{i}_BACKEND_TYPE": "block",
                      f"DISK_{i}_SIZE": str(int(subprocess.run(["blockdev", "--getsize64", d], capture_output=True,
                                                               text=True, check=True).stdout) // 2**20)})
        e.update(kw)
        return {k: v for k, v in e.items() if v is not None}

    def run(self, script: str, env: dict[str, str], *args: str, check: bool = True, **kw):
        kw.setdefault("stdout", subprocess.PIPE)
        cp = subprocess.run([os.path.join(OS_DIR, script), *args], cwd=OS_DIR, env=env, stderr=subprocess.PIPE, **kw)
        if check and cp.returncode != 0:
            raise AssertionError(f"{script} exit {cp.returncode}:\n{_text(cp.stdout)}\n{_text(cp.stderr)}")
        return cp


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else b


@contextmanager
def mounted(dev: str, where):
    where.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "ro" if dev.startswith("/dev/") else "ro,loop", dev, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def blkid(dev: str) -> str:
    return subprocess.run(["blkid", "-o", "value", "-s", "TYPE", dev], capture_output=True, text=True).stdout.strip()


@pytest.fixture
def node(debian12_image, tmp_path, as_root):
    need_tools("losetup", "blkid", "tar", "mkfs.ext4", "mkfs.xfs", "mkswap")
    return Node(tmp_path, debian12_image)


def test_create_reinstall_rename_export_import(node, debian12_image, tmp_path):
    before = host_state(str(tmp_path))
    with ExitStack() as stack:
        d0 = stack.enter_context(loop_disk(tmp_path / "d0.img", 2048))
        d1 = stack.enter_context(loop_disk(tmp_path / "d1.img", 256))
        env = node.env("inst1.sixen.test", [d0, d1])
        out = _text(node.run("create", env).stdout)
        assert "Installing inst1.sixen.test from image 'debian12'" in out and "boots by pvgrub2" in out, out
        assert blkid(d0) == "ext4" and blkid(d1) == "swap"
        with mounted(d0, tmp_path / "m") as m:
            assert (m / "etc/hostname").read_text().strip() == "inst1"
            fstab = (m / "etc/fstab").read_text()
            assert "/dev/xvda\t/\text4" in fstab and "/dev/xvdb\tnone\tswap" in fstab, fstab
            grub = (m / "boot/grub/grub.cfg").read_text()
            assert "root=/dev/xvda " in grub and "linux /boot/vmlinuz-" in grub, grub
            keys = sorted(p.read_text() for p in (m / "etc/ssh").glob("ssh_host_*_key.pub"))
            assert keys and keys != sorted(p.read_text() for p in (
                __import__("pathlib").Path(debian12_image) / "etc/ssh").glob("ssh_host_*_key.pub")), "a fresh identity"
        assert not os.path.exists(f"{debian12_image}/etc/si-xen"), "the image is never written"

        # reinstall with other OS parameters: xfs this time; the identity is kept (identity=keep)
        out = _text(node.run("create", {**env, "INSTANCE_REINSTALL": "1", "OSP_FILESYSTEM": "xfs"}).stdout)
        assert blkid(d0) == "xfs" and "Keeping inst1.sixen.test's identity" in out, out
        with mounted(d0, tmp_path / "m") as m:
            assert sorted(p.read_text() for p in (m / "etc/ssh").glob("ssh_host_*_key.pub")) == keys
        assert not os.path.exists(tmp_path / "state/ganeti/carry/inst1.sixen.test")
        # identity=fresh: new keys
        node.run("create", {**env, "INSTANCE_REINSTALL": "1", "OSP_FILESYSTEM": "xfs", "OSP_IDENTITY": "fresh"})
        with mounted(d0, tmp_path / "m") as m:
            fresh = sorted(p.read_text() for p in (m / "etc/ssh").glob("ssh_host_*_key.pub"))
            assert fresh and fresh != keys
        node.run("create", {**env, "INSTANCE_REINSTALL": "1", "OSP_FILESYSTEM": "xfs"})  # kept again
        with mounted(d0, tmp_path / "m") as m:
            assert sorted(p.read_text() for p in (m / "etc/ssh").glob("ssh_host_*_key.pub")) == fresh

        # rename: the hostname fixups again, nothing else
        node.run("rename", {**node.env("inst2.sixen.test", [d0, d1]), "OLD_INSTANCE_NAME": "inst1.sixen.test",
                            "OSP_FILESYSTEM": "xfs"})
        with mounted(d0, tmp_path / "m") as m:
            assert (m / "etc/hostname").read_text().strip() == "inst2"
            assert "inst2" in (m / "etc/hosts").read_text() and "inst1" not in (m / "etc/hosts").read_text()
            keys = sorted(p.read_text() for p in (m / "etc/ssh").glob("ssh_host_*_key.pub"))

        # export: disk 0 as a tar of its tree (any filesystem), the swap as nothing
        dump = tmp_path / "disk0.tar"
        r, w = os.pipe()
        with open(dump, "wb") as f:
            node.run("export", {**node.env("inst2.sixen.test", [d0, d1]), "EXPORT_INDEX": "0", "EXPORT_DEVICE": d0,
                                "EXP_SIZE_FD": str(w)}, stdout=f, pass_fds=(w,))
        os.close(w)
        size = int(os.read(r, 64).decode().strip())
        os.close(r)
        assert 100 * 2**20 < size < 2048 * 2**20 and dump.stat().st_size > 100 * 2**20
        swap = node.run("export", {**node.env("inst2.sixen.test", [d0, d1]), "EXPORT_INDEX": "1", "EXPORT_DEVICE": d1})
        assert swap.stdout == b""

        # import elsewhere (other disks, name and NIC): boots the same guest, with its identity kept
        e0 = stack.enter_context(loop_disk(tmp_path / "e0.img", 3072))
        e1 = stack.enter_context(loop_disk(tmp_path / "e1.img", 128))
        ienv = node.env("inst3.sixen.test", [e0, e1], mac="aa:00:00:00:00:03", NIC_0_IP="192.0.2.53",
                        NIC_0_NETWORK_SUBNET="192.0.2.0/24", NIC_0_NETWORK_GATEWAY="192.0.2.1")
        with open(dump, "rb") as f:
            node.run("import", {**ienv, "IMPORT_INDEX": "0", "IMPORT_DEVICE": e0}, stdin=f)
        node.run("import", {**ienv, "IMPORT_INDEX": "1", "IMPORT_DEVICE": e1}, input=b"")
        assert blkid(e0) == "ext4" and blkid(e1) == "swap"
        with mounted(e0, tmp_path / "m") as m:
            assert (m / "etc/hostname").read_text().strip() == "inst3"
            assert sorted(p.read_text() for p in (m / "etc/ssh").glob("ssh_host_*_key.pub")) == keys
            assert "192.0.2.53" in (m / "etc/network/interfaces").read_text()
            assert "root=/dev/xvda " in (m / "boot/grub/grub.cfg").read_text()
        assert not [n for n in os.listdir(tmp_path / "state/ganeti") if n.startswith("import-")], "unpacked tree left"
    assert host_state(str(tmp_path)) == before


def test_create_onto_file_disks(node, tmp_path):
    """Ganeti's file template: DISK_N_PATH a regular file (file:loop), mounted through a loop device
    that goes away with the mount."""
    before = host_state(str(tmp_path))
    disks = []
    for name, mib in (("f0.img", 2048), ("f1.img", 128)):
        with open(tmp_path / name, "wb") as f:
            f.truncate(mib * 2**20)
        disks.append(str(tmp_path / name))
    env = node.env("file1.sixen.test", [], DISK_COUNT="2", OSP_FILESYSTEM="ext3")
    for i, (d, mib) in enumerate(zip(disks, (2048, 128), strict=True)):
        env.update({f"DISK_{i}_PATH": d, f"DISK_{i}_SIZE": str(mib), f"DISK_{i}_BACKEND_TYPE": "file:loop"})
    node.run("create", env)
    assert blkid(disks[0]) == "ext3" and blkid(disks[1]) == "swap"
    with mounted(disks[0], tmp_path / "m") as m:
        assert (m / "etc/hostname").read_text().strip() == "file1"
    assert host_state(str(tmp_path)) == before


def test_failures_end_in_one_fatal_line_and_leave_nothing_mounted(node, tmp_path):
    before = host_state(str(tmp_path))
    with loop_disk(tmp_path / "small.img", 64) as small, loop_disk(tmp_path / "d0.img", 2048) as d0:
        for env, want in (
            (node.env("inst1.sixen.test", [d0], OS_VARIANT="nosuch", INSTANCE_OS="systemimager+nosuch"),
             "FATAL: image 'nosuch' not found"),
            (node.env("inst1.sixen.test", [small]), "FATAL: disk 0 of inst1.sixen.test has 64 MiB, image 'debian12' needs"),
            (node.env("inst1.sixen.test", [d0], INSTANCE_HV_kernel_path="/boot/vmlinuz-x", INSTANCE_HV_root_path="/dev/xvda1"),
             "FATAL: the cluster's xen-pvm root_path is /dev/xvda1"),
            (node.env("inst1.sixen.test", [d0], INSTANCE_BE_maxmem="128"),
             "FATAL: the instance's maxmem 128M is too small for this guest"),
        ):
            cp = node.run("create", env, check=False)
            last = _text(cp.stderr).strip().splitlines()[-1]
            assert cp.returncode == 1 and last.startswith(want), _text(cp.stderr)
        assert blkid(d0) == "", "a refused create writes nothing"
    cp = node.run("verify", {**node.base, "OS_API_VERSION": "20", "OS_VARIANT": "debian12", "OSP_FILESYSTEM": "zfs",
                             "OSP_COLOUR": "red"}, "parameters", check=False)
    assert cp.returncode == 1 and b"unknown OS parameter 'colour'" in cp.stderr and b"filesystem='zfs'" in cp.stderr
    assert node.run("verify", {**node.base, "OS_VARIANT": "debian12"}, "parameters").returncode == 0
    assert node.run("create", node.base, "-h", check=False).returncode == 2
    assert host_state(str(tmp_path)) == before
