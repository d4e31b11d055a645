"""si_mkxenvm on hostile or broken images: one FATAL line, or a VM made without reading
anything outside the image; never a traceback, the image unchanged, nothing left behind.

Each image is a hard-link copy of the Debian 12 test image (a second or so) whose changed
entries are replaced, never written through, so the cached image stays as it was."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.conftest import need_tools

from .harness import debugfs_cat, debugfs_ls, host_state, make_env, manifest, tree_files

pytestmark = pytest.mark.integration
HOST = "hostile01"
ARGS = ["--hostname", HOST, "--memory", "512M", "--size", "2G", "--swap", "0", "--dhcp"]
KERNEL = "boot/vmlinuz-6.1.0-50-amd64"
INITRD = "boot/initrd.img-6.1.0-50-amd64"
LAYOUT = "etc/systemimager/autoinstallscript.conf"
# Root without the capabilities that let it read any file: a mode-000 file is unreadable.
NO_DAC = ("setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search")


def replace(root: str, gpath: str, make) -> None:
    """Unlink (never write through) the entry at ``gpath``, then ``make(host_path)`` anew
    (``make(host_path, old_bytes)`` for a changed copy of the image's own file)."""
    p = os.path.join(root, gpath)
    if getattr(make, "from_old", False):
        with open(p, "rb") as f:
            old = f.read()
        os.unlink(p)
        return make(p, old)
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
    elif os.path.lexists(p):
        os.unlink(p)
    make(p)


def unreadable_copy(src: str):
    def make(p):
        shutil.copyfile(src, p)
        os.chmod(p, 0)

    return make


def changed(edit):
    """The image's own file, changed by ``edit(bytes)``: written anew, the cached one untouched."""

    def make(p, old):
        with open(p, "wb") as f:
            f.write(edit(old))

    make.from_old = True
    return make


# name: (the image's changed entries, expected outcome: a FATAL naming this, or None for a VM)
CASES = {
    "ssh-loop": ({"etc/ssh": lambda p: os.symlink("ssh", p)},
                 "image 'ssh-loop' is unusable: /etc/ssh: too many levels of symbolic links"),
    "ssh-pub-loop": ({"etc/ssh/ssh_host_rsa_key.pub": lambda p: os.symlink("ssh_host_rsa_key.pub", p)},
                     "/etc/ssh/ssh_host_rsa_key.pub: too many levels of symbolic links"),
    "ssh-out": ({"etc/ssh": lambda p: os.symlink("/etc", p)}, None),
    # resolved in the guest: its /etc/shadow, which is no kernel (the dom0's is never read)
    # resolved in the guest, to its /etc/shadow: refused as no kernel ("too small to be a kernel"
    # below 4 KiB, which the image's shadow may or may not be, else "not a Linux kernel")
    "kernel-shadow": ({KERNEL: lambda p: os.symlink("/etc/shadow", p)},
                      re.compile(rf"image 'kernel-shadow': its kernel /{KERNEL} is (not a Linux kernel|"
                                 r"\d+ bytes, too small to be a kernel)")),
    # resolved in the guest, to a kernel the dom0 does not have there: the guest's is booted
    "kernel-link": ({"boot/linux-real": lambda p: shutil.copyfile(os.path.join(os.path.dirname(p), KERNEL[5:]), p),
                     KERNEL: lambda p: os.symlink("/boot/linux-real", p)}, None),
    "os-release-unreadable": ({"usr/lib/os-release": unreadable_copy("/etc/os-release")},
                              "cannot read /usr/lib/os-release: Permission denied"),
    "hostname-unreadable": ({"etc/hostname": unreadable_copy("/etc/hostname")}, "Permission denied"),
    "hostname-fifo": ({"etc/hostname": os.mkfifo}, None),
    "hostname-dir": ({"etc/hostname": os.mkdir}, None),
    # boot files read for what they are before anything is made
    "kernel-empty": ({KERNEL: lambda p: open(p, "wb").close()},
                     f"image 'kernel-empty': its kernel /{KERNEL} is empty (0 bytes)"),
    "initrd-truncated": ({INITRD: changed(lambda b: b[:len(b) // 2])},
                         f"image 'initrd-truncated': its initramfs /{INITRD} is truncated: its gzip data ends early"),
    "initrd-100-bytes": ({INITRD: changed(lambda b: b[:100])},
                         f"image 'initrd-100-bytes': its initramfs /{INITRD} is truncated"),
    # a malformed layout with --layout image: the file and its line
    "fsinfo-line-x": ({LAYOUT: changed(lambda b: b.replace(b'line="20"', b'line="x"'))},
                      f'/{LAYOUT} line 12: <fsinfo> line="x" is not a whole number'),
}
EXTRA = {"fsinfo-line-x": ("--layout", "image"), "initrd-100-bytes": ("--memory", "1888M")}


@pytest.fixture(scope="module")
def image(debian12_image):
    need_tools("rsync", "mkfs.ext4", "debugfs", "losetup", "ssh-keygen", "setpriv")
    before = manifest(debian12_image)
    yield debian12_image
    assert manifest(debian12_image) == before, "the cached test image was modified"


@pytest.fixture
def hostile(image, tmp_path):
    def make(name):
        root = str(tmp_path / "images" / name)
        os.makedirs(os.path.dirname(root))
        subprocess.run(["cp", "-al", image, root], check=True)
        for gpath, entry in CASES[name][0].items():
            replace(root, gpath, entry)
        return root

    return make


def dom0_files() -> tuple:
    """What the links of CASES point at on the dom0."""
    texts = []
    for path in ("/etc/hostname", "/etc/shadow", "/etc/os-release"):
        with open(path, "rb") as f:
            texts.append(f.read())
    return manifest("/etc/ssh"), *texts


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_image(hostile, tmp_path, name):
    root = hostile(name)
    env = make_env(tmp_path / "env", os.path.dirname(root))
    before, image_before, dom0_before = host_state(env.base, (HOST,)), manifest(root), dom0_files()
    wrapper = NO_DAC if "unreadable" in name else ()
    cp = env.mk(root, *ARGS, *EXTRA.get(name, ()), "--dir", env.dir, "--output", env.output, wrapper=wrapper)
    want = CASES[name][1]
    assert "Traceback" not in cp.stdout + cp.stderr, cp.stderr
    if want:
        lines = cp.stderr.strip().splitlines()
        named = want.search(lines[0]) if isinstance(want, re.Pattern) else want in lines[0]
        assert cp.returncode == 1 and len(lines) == 1 and lines[0].startswith("FATAL: ") and named, cp.stderr
        assert "(" in lines[0], "the message names a fix"
        assert tree_files(env.dir) in ([], [f"{env.dir}/domains"]) and os.listdir(env.output) == []
        assert not [f for f in tree_files(env.base) if "journal" in f or f.startswith(env.lock + "/")], "journal or lock"
    else:
        assert cp.returncode == 0, cp.stdout + cp.stderr
        check_vm(name, f"{env.dir}/domains/{HOST}", root)
        env.run("rmxenvm", HOST, "--yes", check=True)
        assert tree_files(env.dir) in ([], [f"{env.dir}/domains"]) and os.listdir(env.output) == []
    assert manifest(root) == image_before, "the image was modified"
    assert dom0_files() == dom0_before, "the dom0's files were changed"
    assert host_state(env.base, (HOST,)) == before, "loop devices, mounts or temp dirs left behind"


def check_vm(name: str, vm: str, root: str) -> None:
    """What the VM got: the guest's own files, never the dom0's."""
    disk = f"{vm}/disk.img"
    if name == "ssh-out":  # /etc/ssh -> /etc resolved in the guest, which has no keys there: none copied in
        assert "ssh_host_" not in "".join(debugfs_ls(disk, "/etc"))
    elif name == "kernel-link":  # the link resolved in the guest: its kernel is the VM's
        assert not os.path.exists("/boot/linux-real")
        with open(f"{vm}/vmlinuz", "rb") as got, open(f"{root}/boot/linux-real", "rb") as guest:
            assert got.read() == guest.read()
    elif name == "hostname-fifo":  # never opened (a reader would hang): replaced by the VM's name
        assert debugfs_cat(disk, "/etc/hostname") == f"{HOST}\n"
