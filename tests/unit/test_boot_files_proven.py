"""Kernel and initramfs are read for what they are at planning: a broken one is one Fatal
naming the file as the guest sees it and the fix; the memory need comes from what the
initramfs really unpacks to, never from a trailer a truncated file happens to end with."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
import struct

import pytest

from si_xen import boot, config, initramfs, planner
from si_xen.errors import Fatal
from si_xen.guestfs import Guest
from si_xen.image import open_image
from si_xen.image.survey import survey
from si_xen.request import Request

from . import fakeimage

V = "6.1.0-99-amd64"
KERNEL, INITRD = f"/boot/vmlinuz-{V}", f"/boot/initrd.img-{V}"
EARLY = fakeimage.cpio({"kernel/x86/microcode/GenuineIntel.bin": b"m" * 3000})
MAIN = fakeimage.cpio({"init": b"#!/bin/sh\n", "usr/lib/modules/xen-blkfront.ko": b"k" * 50_000,
                       "big": os.urandom(3 * 2**20)})


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def root(tmp_path):
    return fakeimage.make(tmp_path / "img")


def put(root: str, gpath: str, data: bytes) -> None:
    with open(os.path.join(root, gpath.lstrip("/")), "wb") as f:
        f.write(data)


def check_boot(root: str, tmp_path, memory: str = "2048M"):
    image = open_image(root)
    o = dict(config.BUILTIN, hostname="vm1", dhcp=True, dir=str(tmp_path), output=str(tmp_path), memory=memory)
    return planner.check_boot(planner.make_plan(Request.from_options(o), image, survey(root)), image)


def refused(root: str, tmp_path, gpath: str, problem: str) -> str:
    with pytest.raises(Fatal) as e:
        check_boot(root, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"image 'img': its {'kernel' if 'vmlinuz' in gpath else 'initramfs'} {gpath} {problem}"), msg
    assert root not in msg, "the guest path, never the host's"
    assert "si_getimage again" in e.value.fix and "--kernel and --initrd" in e.value.fix
    return msg


def elf(truncate: int = 0) -> bytes:
    """A 64-bit x86 ELF vmlinux with one PT_LOAD segment of 1 MiB."""
    eh = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, 64, 0, 0,
                                                                   64, 56, 1, 0, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 1, 7, 4096, 0x1000000, 0x1000000, 2**20, 2**20, 4096)
    data = (eh + ph).ljust(4096, b"\0") + os.urandom(2**20)
    return data[:len(data) - truncate]


# kernel classes: what the guest's /boot/vmlinuz holds -> the problem named (None: boots)
KERNELS = {
    "empty": (b"", "is empty (0 bytes)"),
    "garbage": (os.urandom(3 * 2**20), "is not a Linux kernel"),
    "cut-inside-its-header": (fakeimage.bzimage()[:0x210], "is 528 bytes, too small to be a kernel"),
    "truncated-bzimage": (fakeimage.bzimage()[:2**20], "is truncated: 1048576 bytes of the 2097152 its bzImage header"),
    "old-protocol": (fakeimage.bzimage()[:0x206] + b"\x01\x02" + fakeimage.bzimage()[0x208:], "is a bzImage of boot protocol 2.01, older than the 2.08 Xen needs"),
    "truncated-elf": (elf(truncate=4096), "is truncated"),
    "elf-vmlinux": (elf(), None),
    "bzimage": (fakeimage.bzimage(), None),
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_read_for_what_it_is(root, tmp_path, name):
    data, problem = KERNELS[name]
    put(root, KERNEL, data)
    if problem:
        refused(root, tmp_path, KERNEL, problem)
    else:
        assert check_boot(root, tmp_path).kernel == KERNEL


def gz(data: bytes) -> bytes:
    return gzip.compress(data, 1)


# initramfs classes -> the problem named (None: boots, with the members seen)
INITRAMFS = {
    "empty": (b"", "is empty (0 bytes)"),
    "garbage": (os.urandom(100_000), "is not an initramfs: neither a cpio archive nor a known compression"),
    "truncated-gzip": (EARLY + gz(MAIN)[:-5000], "is truncated: its gzip data ends early"),
    "truncated-xz": (EARLY + lzma.compress(MAIN)[:-5000], "is truncated: its xz data ends early"),
    "truncated-bzip2": (bz2.compress(MAIN)[:-5000], "is truncated: its bzip2 data ends early"),
    "truncated-100-bytes": (gz(MAIN)[:100], "is truncated: its gzip data ends early"),
    "corrupt-gzip": (gz(MAIN)[:5000] + os.urandom(50_000) + gz(MAIN)[55_000:], "is corrupt: its gzip data does not"),
    "truncated-cpio": (MAIN[:2**20], "is truncated: a cpio archive ends inside a member"),
    "not-cpio-inside": (gz(os.urandom(50_000)), "is corrupt: its gzip data does not unpack to cpio archives"),
    "junk-after": (EARLY + gz(MAIN) + b"junk" * 100, "is corrupt: after 4 cpio members comes data"),
    "zeros": (bytes(8192), "holds nothing but zeros"),
    "early-microcode+gzip": (EARLY + gz(MAIN), None),
    "early-microcode+xz+cpio-after": (EARLY + lzma.compress(MAIN) + fakeimage.cpio({"extra/fw.bin": b"f"}), None),
    "gzip+zero-padding+gzip": (gz(MAIN) + bytes(512) + gz(fakeimage.cpio({"late/conf": b"c"})), None),
}


@pytest.mark.parametrize("name", sorted(INITRAMFS))
def test_initramfs_read_for_what_it_is(root, tmp_path, name):
    data, problem = INITRAMFS[name]
    put(root, INITRD, data)
    if problem:
        refused(root, tmp_path, INITRD, problem)
        return
    k = check_boot(root, tmp_path)
    names = initramfs.scan_cached(Guest(root).path(INITRD)).names
    assert "init" in names and "usr/lib/modules/xen-blkfront.ko" in names
    assert ("kernel/x86/microcode/GenuineIntel.bin" in names) == ("early" in name)
    assert ("extra/fw.bin" in names) == ("cpio-after" in name) and ("late/conf" in names) == name.startswith("gzip+")
    assert k.memory_need == (boot.BASE_MEMORY_MIB + 2 + (len(data) + initramfs.scan(Guest(root).path(INITRD)).unpacked)
                             // 2**20 + 31) // 32 * 32


def test_a_truncated_initrd_whose_last_bytes_claim_1888_mib_is_refused_as_truncated(root, tmp_path):
    """What main did: gzip's ISIZE trailer read from the last bytes of a cut file (here
    compressed data saying 1888 MiB) asked for --memory 1888M."""
    data = EARLY + gz(MAIN + bytes(1888 * 2**20 // 1000))
    cut = next(n for n in range(len(data) - 64, 0, -1)
               if int.from_bytes(data[n - 4:n], "little") > 2**30)  # a cut whose last 4 bytes claim > 1 GiB
    put(root, INITRD, data[:cut])
    msg = refused(root, tmp_path, INITRD, "is truncated")
    assert "1888" not in msg and "--memory" not in msg


def test_the_memory_need_is_what_the_initramfs_really_unpacks_to(root, tmp_path):
    """xz-compressed zeros followed by an uncompressed archive (valid: the kernel unpacks
    both); main guessed 4x the file size when its xz could not read to the end."""
    packed = lzma.compress(MAIN + bytes(40 * 2**20), preset=0)
    put(root, INITRD, EARLY + packed + fakeimage.cpio({"extra/fw.bin": b"f"}))
    k = check_boot(root, tmp_path)
    unpacked = len(EARLY) + len(MAIN) + 40 * 2**20 + len(fakeimage.cpio({"extra/fw.bin": b"f"}))
    size = os.path.getsize(Guest(root).path(INITRD))
    assert k.memory_need == (boot.BASE_MEMORY_MIB + 2 + (size + unpacked) // 2**20 + 31) // 32 * 32
    with pytest.raises(Fatal, match=rf"^--memory 64M is too small for this guest: .* need {k.memory_need} MiB"):
        check_boot(root, tmp_path, memory="64M")


def test_an_initramfs_bomb_is_refused_without_unpacking_it_all(root, tmp_path, monkeypatch):
    monkeypatch.setattr(initramfs, "MAX_UNPACKED", 2 * 2**20)
    put(root, INITRD, gz(MAIN))
    refused(root, tmp_path, INITRD, "unpacks to more than")


@pytest.mark.allow_subprocess(reason="zstd has no Python module: the dom0's zstd is what reads it")
@pytest.mark.parametrize("cut", [0, 5000])
def test_zstd_is_read_by_the_dom0_tool(root, tmp_path, cut):
    if not shutil.which("zstd"):
        pytest.skip("no zstd")
    import subprocess

    packed = subprocess.run(["zstd", "-q", "-c"], input=MAIN, capture_output=True, check=True).stdout
    put(root, INITRD, EARLY + packed[:len(packed) - cut])
    if cut:
        refused(root, tmp_path, INITRD, "is truncated")
    else:
        assert check_boot(root, tmp_path).initrd == INITRD


def test_a_missing_decompressor_is_named_with_its_package(root, tmp_path, monkeypatch):
    monkeypatch.setattr(initramfs.proc, "which", lambda tool: None)
    put(root, INITRD, b"\x28\xb5\x2f\xfd" + os.urandom(1000))
    with pytest.raises(Fatal, match=rf"^cannot check the initramfs {INITRD}: it is zstd-compressed and this dom0 "
                                    r"has no zstd to check it \(apt-get install zstd\)$"):
        check_boot(root, tmp_path)


def test_a_supplied_broken_kernel_is_named_by_its_option(root, tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"")
    image = open_image(root)
    o = dict(config.BUILTIN, hostname="vm1", dhcp=True, dir=str(tmp_path), output=str(tmp_path), kernel=str(kernel))
    with pytest.raises(Fatal, match=rf"^--kernel {kernel} is empty \(0 bytes\) \(give a working kernel to --kernel\)$"):
        planner.check_boot(planner.make_plan(Request.from_options(o), image, survey(root)), image)


@pytest.mark.parametrize("facts", ['{"kernel": "x", "memory_need": 1}', "[1]", '{"kernel": {"bogus": 1}}',
                                   '{"kernel": {"version": "v", "kernel": "/k", "initrd": null}, "memory_need": "lots"}'])
def test_boot_facts_not_as_remembered_are_measured_again(root, tmp_path, facts):
    image = open_image(root)
    o = dict(config.BUILTIN, hostname="vm1", dhcp=True, dir=str(tmp_path), output=str(tmp_path))
    plan = planner.make_plan(Request.from_options(o), image, survey(root))
    facts_dir = tmp_path / "facts"
    facts_dir.mkdir()
    (facts_dir / f"{plan.image_name}-{plan.fingerprint}.json").write_text(facts)
    k = planner.check_boot(plan, image, str(facts_dir))
    assert k.kernel == KERNEL and k.initrd == INITRD and k.memory_need >= boot.BASE_MEMORY_MIB
