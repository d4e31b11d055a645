"""Malformed grub files and fstab in a guest: the fixups give a working VM and name what
they left alone (file and line); never a traceback, never a file made worse."""

import os

from si_xen.fixups import run_all
from tests.unit.fixups.conftest import STATIC

GARBAGE = "\x7fELF\x00\x01\udcff\udcfe\t\"'`$(\n\nkernel\nlinux\noptions\n"


def put(root, path, text):
    with open(os.path.join(root, path), "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write(text)


def read(root, path):
    with open(os.path.join(root, path), encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def run(root):
    said = []
    run_all(root, STATIC, log=said.append)
    return said


def test_an_unterminated_quote_in_default_grub_is_left_as_it_is_and_named(tree):
    root = tree("debian12")
    put(root, "etc/default/grub", 'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX_DEFAULT="quiet\nGRUB_TIMEOUT=5\n'
                                  "GRUB_CMDLINE_LINUX='root=/dev/sda1 splash\n")
    for path in ("boot/grub/grub.cfg", "etc/fstab"):
        put(root, path, GARBAGE + read(root, path))
    said = run(root)
    text = read(root, "etc/default/grub")
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="quiet\n' in text and "GRUB_CMDLINE_LINUX='root=/dev/sda1 splash\n" in text
    warned = [m for m in said if "/etc/default/grub line" in m]
    assert any("/etc/default/grub line 2: GRUB_CMDLINE_LINUX_DEFAULT is not one sh word" in m for m in warned), said
    assert any("/etc/default/grub line 4: GRUB_CMDLINE_LINUX is not one sh word" in m for m in warned), said
    assert all(m.startswith("WARNING: ") for m in warned)
    fstab = read(root, "etc/fstab")  # the garbage lines are the golden client's, not disks: kept, ours first
    assert fstab.startswith("# /etc/fstab: written by si-xen") and "/dev/xvda2\t/\text4" in fstab
    assert "root=/dev/xvda2" in read(root, "boot/grub/grub.cfg")


def test_default_grub_values_are_read_as_sh_reads_them(tree):
    root = tree("debian12")
    put(root, "etc/default/grub", 'GRUB_CMDLINE_LINUX="root=UUID=0b7c quiet"  # the golden client\'s root\n'
                                  "GRUB_CMDLINE_LINUX_DEFAULT='$EXTRA splash'\n")
    said = run(root)
    text = read(root, "etc/default/grub")
    assert 'GRUB_CMDLINE_LINUX="root=/dev/xvda2 quiet console=hvc0"\n' in text, text
    assert "GRUB_CMDLINE_LINUX_DEFAULT='$EXTRA splash'\n" in text, text
    assert not [m for m in said if m.startswith("WARNING") and "default/grub" in m]


def test_another_kernels_truncated_initramfs_is_named_for_what_it_is(tree):
    import gzip

    from tests.unit import fakeimage

    root = tree("debian12")
    packed = gzip.compress(fakeimage.cpio({"init": b"#!/bin/sh\n", "big": os.urandom(2**20)}))
    with open(os.path.join(root, "boot/vmlinuz-6.1.0-18-amd64"), "wb") as f:
        f.write(fakeimage.bzimage())
    with open(os.path.join(root, "boot/initrd.img-6.1.0-18-amd64"), "wb") as f:
        f.write(packed[:len(packed) // 2])
    said = run(root)
    assert "WARNING: kernel: /boot/initrd.img-6.1.0-18-amd64 is truncated: its gzip data ends early; rebuild it " \
           "in the guest before booting its kernel" in said, said
