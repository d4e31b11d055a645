import os

import pytest

from si_xen import boot, initramfs
from si_xen.guestfs import Guest

from . import fakeimage


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path / "cache"))


def test_initramfs_read_as_the_kernel_unpacks_it(tmp_path):
    root = fakeimage.make(tmp_path / "img", unpacked_mib=40)
    g = Guest(root)
    k = boot.find_kernel(g)
    assert k.version == "6.1.0-99-amd64" and k.initrd.endswith("initrd.img-6.1.0-99-amd64")
    s = initramfs.scan(g.path(k.initrd))
    assert s.names == ("kernel/x86/microcode/AuthenticAMD.bin", "init", "big")
    assert 40 * 2**20 < s.unpacked < 41 * 2**20


def test_initramfs_scan_is_cached_by_file_identity(tmp_path, monkeypatch):
    root = fakeimage.make(tmp_path / "img", unpacked_mib=4, microcode=False)
    path = Guest(root).path("/boot/initrd.img-6.1.0-99-amd64")
    first = initramfs.scan_cached(path)
    monkeypatch.setattr(initramfs, "scan", lambda p: pytest.fail("scanned twice"))
    assert initramfs.scan_cached(path) == first and first.names == ("init", "big")


def test_unknown_compression_is_unreadable(tmp_path):
    p = tmp_path / "initrd"
    p.write_bytes(b"\x42\x42\x42\x42" * 100)
    with pytest.raises(initramfs.Unreadable):
        initramfs.scan(str(p))


def test_memory_need_grows_with_the_initramfs(tmp_path):
    small = Guest(fakeimage.make(tmp_path / "a", unpacked_mib=8))
    big = Guest(fakeimage.make(tmp_path / "b", unpacked_mib=200))
    need_small = boot.memory_needed(small, boot.find_kernel(small))
    need_big = boot.memory_needed(big, boot.find_kernel(big))
    assert need_small % 32 == 0 and need_small >= boot.BASE_MEMORY_MIB
    assert need_big - need_small >= 190


def test_newest_kernel_with_an_initrd_wins(tmp_path):
    root = fakeimage.make(tmp_path / "img")
    open(os.path.join(root, "boot/vmlinuz-6.10.0-1-amd64"), "wb").close()  # newer, but no initrd
    open(os.path.join(root, "boot/vmlinuz-6.2.0-1-amd64"), "wb").close()
    open(os.path.join(root, "boot/initrd.img-6.2.0-1-amd64"), "wb").close()
    assert boot.find_kernel(Guest(root)).version == "6.2.0-1-amd64"


def test_no_kernel(tmp_path):
    (tmp_path / "boot").mkdir()
    assert boot.find_kernel(Guest(str(tmp_path))) is None


def test_grub_cfg_for_bootloaders_keeps_the_original(tmp_path):
    root = fakeimage.make(tmp_path / "img")
    g = Guest(root)
    g.write_text("/boot/grub/grub.cfg", "golden client menu\n")
    k = boot.find_kernel(g)
    boot.write_grub_cfg(g, k, "xvda2", False, "Debian (si-xen)")
    cfg = g.read_text("/boot/grub/grub.cfg")
    assert "linux /boot/vmlinuz-6.1.0-99-amd64 root=/dev/xvda2 ro console=hvc0" in cfg
    assert "initrd /boot/initrd.img-6.1.0-99-amd64" in cfg
    assert g.read_text("/boot/grub/grub.cfg.si-xen-orig") == "golden client menu\n"
    boot.write_grub_cfg(g, k, "xvda3", True, "Debian (si-xen)")  # /boot on its own disk
    assert "linux /vmlinuz-6.1.0-99-amd64 root=/dev/xvda3" in g.read_text("/boot/grub/grub.cfg")
    assert g.read_text("/boot/grub/grub.cfg.si-xen-orig") == "golden client menu\n"
