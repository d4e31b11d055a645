"""The slim initramfs of the REAL Debian 12 test image (MODULES=most): much smaller, still
holding the Xen drivers and ext4 with every dependency, and unpacked by the host's own tools
(gzip/zstd and cpio) to the same files as the guest's, modules and firmware aside. As the
image holds it (gzip), and recompressed as Debian's default COMPRESS=zstd would write it,
behind an early-microcode archive made by the host's cpio."""

from __future__ import annotations

import filecmp
import glob
import os
import subprocess
import zlib

import pytest

from si_xen import initramfs, initramfs_slim
from tests.conftest import need_tools

DECOMPRESS = {"gzip": ["gzip", "-dc"], "zstd": ["zstd", "-q", "-dc"]}


def sh(argv, **kw) -> bytes:
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, **kw).stdout


def unpack(path: str, dest, skip: int = 0) -> list[str]:
    """The archive after ``skip`` bytes, as the host's tools unpack it: its names (cpio -t), and
    its files extracted under ``dest``."""
    with open(path, "rb") as f:
        f.seek(skip)
        packed = f.read()
    kind = initramfs_slim_kind(packed)
    raw = sh(DECOMPRESS[kind], input=packed)
    names = sh(["cpio", "-t", "--quiet"], input=raw).decode().split("\n")
    os.makedirs(dest)
    subprocess.run(["cpio", "-id", "--quiet", "--no-absolute-filenames"], input=raw, cwd=dest, check=True)
    return [n for n in names if n]


def initramfs_slim_kind(data: bytes) -> str:
    return next(t for m, t in initramfs.MAGIC.items() if data.startswith(m))


@pytest.fixture(scope="module")
def guest_initrd(debian12_image, tmp_path_factory):
    need_tools("cpio", "gzip", "zstd")
    found = sorted(glob.glob(f"{debian12_image}/boot/initrd.img-*"))
    assert found, "the Debian 12 test image has no /boot/initrd.img-*"
    return found[-1]


@pytest.fixture(params=["as-the-image-holds-it", "zstd-behind-microcode"])
def source(request, guest_initrd, tmp_path):
    if request.param == "as-the-image-holds-it":
        return guest_initrd, 0
    (tmp_path / "early/kernel/x86/microcode").mkdir(parents=True)
    (tmp_path / "early/kernel/x86/microcode/GenuineIntel.bin").write_bytes(os.urandom(50_000))
    early = sh(["cpio", "-o", "-H", "newc", "--quiet"], input=b"kernel\nkernel/x86\nkernel/x86/microcode\n"
               b"kernel/x86/microcode/GenuineIntel.bin\n", cwd=tmp_path / "early")
    raw = sh(["gzip", "-dc", guest_initrd])
    path = tmp_path / "initrd-zstd.img"
    path.write_bytes(early + sh(["zstd", "-q", "-1", "-T0", "-c"], input=raw))
    return str(path), len(early)


def test_slim_debian12_initramfs(source, tmp_path, capsys):
    src, early = source
    dst = str(tmp_path / "slim.img")
    r = initramfs_slim.slim(src, dst, fstypes=("ext4",))
    with capsys.disabled():
        print(f"\n[slim {os.path.basename(src)}] {r.compression}: {r.size_before / 2**20:.1f} -> "
              f"{r.size_after / 2**20:.1f} MiB, unpacked {r.unpacked_before / 2**20:.1f} -> "
              f"{r.unpacked_after / 2**20:.1f} MiB, {r.seconds:.2f} s; kept {len(r.kept)}: {' '.join(r.kept)}")
    assert r.slimmed and r.missing == ()
    assert r.size_after * 3 < r.size_before and r.unpacked_after * 3 < r.unpacked_before
    with open(src, "rb") as a, open(dst, "rb") as b:
        assert a.read(early) == b.read(early)  # the early archive as it was

    if r.compression == "gzip":  # ONE member, as Xen's PV domain builder inflates it (xc_dom_do_gunzip)
        with open(dst, "rb") as f:
            data = f.read()[early:]
        d = zlib.decompressobj(31)
        whole = d.decompress(data)
        assert d.eof and d.unused_data == b"" and int.from_bytes(data[-4:], "little") == len(whole) % 2**32
        sh(["gzip", "-t"], input=data)

    scan = initramfs.scan(dst)
    assert {"xen-blkfront", "xen-netfront", "ext4"} <= scan.modules == set(r.kept)
    assert scan.unpacked == r.unpacked_after

    # the host's tools read it, to the names the product's reader sees
    names = unpack(dst, tmp_path / "slim", early)
    head = len(scan.names) - len(names)
    assert list(scan.names[head:]) == names and all(n.startswith("kernel") for n in scan.names[:head])
    orig_names = unpack(src, tmp_path / "orig", early)
    dropped = set(orig_names) - set(names)
    assert dropped and all(".ko" in n or "/kernel" in n or "firmware" in n for n in dropped)

    # every kept module's dependencies are there (its own modules.dep) and the softdeps by alias
    moddir = glob.glob(str(tmp_path / "slim/usr/lib/modules/*"))[0]
    deps = {}
    with open(os.path.join(moddir, "modules.dep")) as f:
        for line in f:
            head, _, tail = line.partition(":")
            deps[head] = tail.split()
    kept = [os.path.relpath(os.path.join(d, n), moddir) for d, _, files in os.walk(moddir) for n in files
            if ".ko" in n]
    assert len(kept) == len(r.kept)
    for k in kept:
        for dep in deps[k]:
            assert os.path.isfile(os.path.join(moddir, dep)), f"{k} needs {dep}"
    assert any("crc32c" in k for k in kept)  # ext4's softdep crypto-crc32c

    # all else is the guest's own, file for file
    for d, _, files in os.walk(tmp_path / "orig"):
        for n in files:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, tmp_path / "orig")
            if ".ko" in n or "firmware" in rel or os.path.islink(p):
                continue
            assert filecmp.cmp(p, tmp_path / "slim" / rel, shallow=False), rel


def test_further_vms_of_the_image_cost_nothing(guest_initrd, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path / "cache"))
    first = initramfs_slim.slim_cached(guest_initrd)
    again = initramfs_slim.slim_cached(guest_initrd)
    with capsys.disabled():
        print(f"\n[slim cache] first {first.seconds:.3f} s, further {again.seconds * 1000:.1f} ms")
    assert again.cached and again.path == first.path and again.seconds < 0.05
