"""The slim initramfs, on synthetic archives: what is kept (the Xen drivers, the filesystem's
modules and their closure from the archive's own depmod files, what its conf and scripts load),
what goes (other modules, firmware), and that the members kept come back exactly (modes,
owners, mtimes, device nodes, symlinks, hard links) with the guest's compression."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import random
import shutil
import stat
import time
import zlib
from dataclasses import asdict

import pytest

from si_xen import initramfs, initramfs_prune, initramfs_slim, initramfs_write, planner

V = "6.1.0-99-amd64"
MD = f"usr/lib/modules/{V}"


def member(name: str, data: bytes = b"", mode: int = 0o100644, ino: int = 0, nlink: int = 1, uid: int = 0,
           gid: int = 0, mtime: int = 1_700_000_000, rdev: tuple[int, int] = (0, 0)) -> bytes:
    nb = name.encode() + b"\0"
    fields = (ino, mode, uid, gid, nlink, mtime, len(data), 0, 0, *rdev, len(nb), 0)
    out = b"070701" + b"".join(b"%08X" % v for v in fields) + nb
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def archive(*members: bytes) -> bytes:
    body = b"".join(members) + member("TRAILER!!!", mtime=0)
    return body + b"\0" * (-len(body) % 512)


def parse(data: bytes) -> dict[str, dict]:
    """An independent newc reader (not the product's): name -> fields and data, later wins."""
    out, i = {}, 0
    while i < len(data):
        if data[i:i + 1] == b"\0":
            i += 1
            continue
        assert data[i:i + 6] == b"070701", f"not newc at {i}"
        f = [int(data[i + 6 + 8 * k:i + 14 + 8 * k], 16) for k in range(13)]
        name = data[i + 110:i + 110 + f[11] - 1].decode()
        i += 110 + f[11]
        i += -i % 4
        body = data[i:i + f[6]]
        i += f[6] + (-f[6] % 4)
        if name != "TRAILER!!!":
            out[name] = {"ino": f[0], "mode": f[1], "uid": f[2], "gid": f[3], "nlink": f[4], "mtime": f[5],
                         "rdev": (f[9], f[10]), "data": body}
    return out


def ko(path: str) -> bytes:
    return member(f"{MD}/kernel/{path}", random.Random(path).randbytes(4000))  # compresses as a module does


DEP = """\
kernel/drivers/block/xen-blkfront.ko:
kernel/drivers/net/xen-netfront.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/fs/xfs/xfs.ko: kernel/lib/libcrc32c.ko
kernel/lib/libcrc32c.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko
kernel/drivers/nvme/host/nvme-core.ko:
kernel/drivers/md/dm-mod.ko:
kernel/drivers/ata/ata_generic.ko: kernel/drivers/ata/libata.ko
kernel/drivers/ata/libata.ko:
kernel/drivers/input/serio/i8042.ko:
kernel/drivers/input/keyboard/atkbd.ko:
kernel/drivers/virtio/virtio_blk.ko:
"""
ALIAS = ("alias fs-xfs xfs\nalias crypto-crc32c crc32c_generic\nalias crc32c crc32c_generic\n"
         "alias pci:v00008086d*sv*sd*bc01sc08i02* nvme\nalias xen:vbd xen_blkfront\n")
SCRIPT = """#!/bin/sh
# modprobe virtio_blk  (a comment: not loaded)
if [ -n "$x" ]; then
\t/sbin/modprobe ata_generic all_generic_ide=1
fi
/sbin/modprobe ${opts} -a i8042 \\
\tatkbd
modprobe -q $m
modprobe -r nvme
"""
MODULE_FILES = ["drivers/block/xen-blkfront.ko", "drivers/net/xen-netfront.ko", "fs/ext4/ext4.ko", "lib/crc16.ko",
                "fs/mbcache.ko", "fs/jbd2/jbd2.ko", "fs/xfs/xfs.ko", "lib/libcrc32c.ko", "crypto/crc32c_generic.ko",
                "drivers/nvme/host/nvme.ko", "drivers/nvme/host/nvme-core.ko", "drivers/md/dm-mod.ko",
                "drivers/ata/ata_generic.ko", "drivers/ata/libata.ko", "drivers/input/serio/i8042.ko",
                "drivers/input/keyboard/atkbd.ko", "drivers/virtio/virtio_blk.ko"]
# What a Xen guest on ext4 keeps: the drivers, ext4's closure and softdep (crypto-crc32c by alias),
# conf/modules' dm-mod, the script's ata_generic (+libata), i8042 and atkbd.
KEPT = {"xen-blkfront", "xen-netfront", "ext4", "crc16", "mbcache", "jbd2", "crc32c-generic", "dm-mod", "ata-generic",
        "libata", "i8042", "atkbd"}
DIR = 0o040755


def main_archive(*, dep: str | None = DEP, builtin: str = "", modules=MODULE_FILES, firmware: bool = True) -> bytes:
    dirs = sorted({"usr", "usr/lib", "usr/lib/modules", MD, f"{MD}/kernel"} |
                  {os.path.dirname(f"{MD}/kernel/{m}") for m in modules} |
                  {os.path.dirname(os.path.dirname(f"{MD}/kernel/{m}")) for m in modules})
    ms = [member(".", mode=DIR), member("lib", b"usr/lib", mode=0o120777), member("dev", mode=DIR),
          member("dev/console", mode=0o020600, rdev=(5, 1)), member("init", b"#!/bin/sh\nexec run-init\n", 0o100755),
          member("conf", mode=DIR), member("conf/modules", b"# modules\ndm-mod\n\n"),
          member("scripts", mode=DIR), member("scripts/init-top", mode=DIR),
          member("scripts/init-top/x", SCRIPT.encode(), 0o100755),
          member("usr/bin", mode=DIR), member("usr/sbin", mode=DIR), member("usr/share", mode=DIR),
          # a hard link pair, the data on the last link as GNU cpio writes it
          member("usr/bin/kmod", b"", 0o100755, ino=77, nlink=2, uid=3, gid=4, mtime=1_600_000_000),
          member("usr/sbin/kmod2", b"KMOD" * 1000, 0o100755, ino=77, nlink=2, uid=3, gid=4, mtime=1_600_000_000),
          ]
    if firmware:
        ms += [member("usr/lib/firmware", mode=DIR), member("usr/lib/firmware/fw.bin", b"F" * 5000),
               # a hard link whose data-carrying link is firmware (dropped): the kept link must get the data
               member("usr/share/blob", b"", ino=88, nlink=2),
               member("usr/lib/firmware/blob", b"B" * 3000, ino=88, nlink=2)]
    ms += [member(d, mode=DIR) for d in dirs]
    ms += [ko(m) for m in modules]
    if dep is not None:
        ms.append(member(f"{MD}/modules.dep", dep.encode()))
    ms += [member(f"{MD}/modules.alias", ALIAS.encode()), member(f"{MD}/modules.builtin", builtin.encode()),
           member(f"{MD}/modules.softdep", b"# Soft dependencies\nsoftdep ext4 pre: crypto-crc32c\n")]
    return archive(*ms)


EARLY = archive(member("kernel", mode=DIR), member("kernel/x86", mode=DIR), member("kernel/x86/microcode", mode=DIR),
                member("kernel/x86/microcode/GenuineIntel.bin", b"u" * 3000))


def compress(kind: str, data: bytes) -> bytes:
    if kind in TOOLS:
        import subprocess

        return subprocess.run([*TOOLS[kind], "-c"], input=data, stdout=subprocess.PIPE, check=True).stdout
    return {"gzip": lambda d: gzip.compress(d, 6), "xz": lambda d: lzma.compress(d, check=lzma.CHECK_CRC32),
            "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE), "bzip2": bz2.compress,
            "none": lambda d: d}[kind](data)


def decompress(kind: str, data: bytes) -> bytes:
    if kind in TOOLS:
        import subprocess

        return subprocess.run([TOOLS[kind][0], "-q", "-dc"], input=data, stdout=subprocess.PIPE, check=True).stdout
    return {"gzip": gzip.decompress, "xz": lzma.decompress, "lzma": lzma.decompress,
            "bzip2": bz2.decompress, "none": lambda d: d}[kind](data)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path / "cache"))


def write(tmp_path, data: bytes, name: str = "initrd.img") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


TOOLS = {"zstd": ["zstd", "-q"], "lz4": ["lz4", "-q", "-l"], "lzop": ["lzop", "-q"]}  # lz4 -l: the kernel's frame


@pytest.mark.parametrize("kind", ["gzip", "xz", "lzma", "bzip2", "none"] + [pytest.param(t, marks=pytest.mark.allow_subprocess(
    reason=f"the dom0's {t} compresses the test's input and decompresses and writes the slim one")) for t in TOOLS])
def test_slim_keeps_what_a_xen_guest_loads_with_the_guests_compression(tmp_path, kind):
    if kind in TOOLS and not shutil.which(kind):
        pytest.skip(f"no {kind} on this host")
    original = parse(main_archive())
    src = write(tmp_path, EARLY + compress(kind, main_archive()))
    dst = str(tmp_path / "slim.img")
    r = initramfs_slim.slim(src, dst)
    assert r.slimmed and r.reason == "" and r.path == dst
    out = open(dst, "rb").read()
    assert out.startswith(EARLY)  # the microcode prefix, byte for byte
    assert r.compression == (None if kind == "none" else kind)
    body = out[len(EARLY):]
    if kind == "lz4":
        assert body.startswith(b"\x02\x21\x4c\x18")  # the legacy frame, the one the kernel reads
    got = parse(decompress(kind, body))
    assert {n.split("/")[-1].split(".ko")[0].replace("_", "-") for n in got if n.endswith(".ko")} == KEPT
    assert set(r.kept) == KEPT and r.missing == () and r.builtin == ()
    # the kernel reads it too: names in the product's reader, microcode first
    names = initramfs.scan(dst).names
    assert names[3] == "kernel/x86/microcode/GenuineIntel.bin" and set(got) <= set(names)
    assert not [n for n in got if "firmware" in n]
    assert not [n for n in got if "nvme" in n or "virtio" in n]  # dropped, and their emptied directories
    # everything else kept exactly: data, mode, owner, mtime, device numbers, symlinks
    kos = [n for n in got if n.endswith(".ko")]
    for name, m in original.items():
        if name.startswith(f"{MD}/kernel/") and stat.S_ISDIR(m["mode"]):  # kept while it holds a kept module
            assert (name in got) == any(k.startswith(name + "/") for k in kos), name
        elif not (name.endswith(".ko") or "firmware" in name or name in ("usr/bin/kmod", "usr/sbin/kmod2",
                                                                         "usr/share/blob")):
            assert got[name] == m, name
    assert got["dev/console"]["rdev"] == (5, 1) and stat.S_ISCHR(got["dev/console"]["mode"])
    assert got["lib"]["data"] == b"usr/lib" and stat.S_ISLNK(got["lib"]["mode"])
    assert r.size_after < r.size_before and r.unpacked_after < r.unpacked_before
    assert r.unpacked_before == initramfs.scan(src).unpacked and r.unpacked_after == initramfs.scan(dst).unpacked


def test_hard_links_keep_their_data_once(tmp_path):
    src = write(tmp_path, gzip.compress(main_archive()))
    dst = str(tmp_path / "slim.img")
    initramfs_slim.slim(src, dst)
    got = parse(gzip.decompress(open(dst, "rb").read()))
    a, b = got["usr/bin/kmod"], got["usr/sbin/kmod2"]
    assert (a["ino"], a["nlink"], a["data"], a["uid"], a["gid"], a["mtime"]) == (77, 2, b"", 3, 4, 1_600_000_000)
    assert (b["ino"], b["nlink"], b["data"]) == (77, 2, b"KMOD" * 1000)
    # its other link (firmware) went, so the kept one carries the data and is alone
    blob = got["usr/share/blob"]
    assert (blob["data"], blob["nlink"]) == (b"B" * 3000, 1)


def one_gzip_member(data: bytes) -> bytes:
    """What Xen's PV domain builder needs of a gzip ramdisk (xc_dom_check_gzip, xc_dom_do_gunzip):
    ONE member, inflated whole by one inflate into a buffer of the size its last 4 bytes give.
    Two members would give the second's size only, and it fails to load."""
    d = zlib.decompressobj(31)
    whole = d.decompress(data)
    assert d.eof and d.unused_data == b"" and not d.unconsumed_tail
    assert int.from_bytes(data[-4:], "little") == len(whole) % 2**32
    assert gzip.decompress(data) == whole
    return whole


@pytest.mark.allow_subprocess(reason="gzip -t: the dom0's gzip checks the member and its trailer")
def test_gzip_is_one_member_made_in_chunks_on_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(initramfs_write, "GZIP_CHUNK", 4096)  # many chunks, the last one short
    monkeypatch.setattr(initramfs_write.os, "cpu_count", lambda: 2)
    src = write(tmp_path, compress("gzip", main_archive()))
    initramfs_slim.slim(src, str(tmp_path / "slim.img"))
    data = (tmp_path / "slim.img").read_bytes()
    whole = one_gzip_member(data)
    assert len(whole) > 10 * 4096 and len(whole) % 4096
    monkeypatch.setattr(initramfs_write, "GZIP_CHUNK", 2**30)  # one chunk: the same archive
    initramfs_slim.slim(src, str(tmp_path / "one.img"))
    assert one_gzip_member((tmp_path / "one.img").read_bytes()) == whole
    import subprocess

    subprocess.run(["gzip", "-t", str(tmp_path / "slim.img")], check=True)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 100_000])
def test_pigz_chunks_join_into_the_data_given(monkeypatch, size):
    """Chunk edges anywhere: none, mid-write, exactly on a chunk (the last chunk is then empty)."""
    monkeypatch.setattr(initramfs_write, "GZIP_CHUNK", 4096)
    data = bytes(random.Random(size).choice(b"abcdefgh ") for _ in range(size))  # compressible, back-references
    out = io.BytesIO()
    with initramfs_write._Pigz(out, 1) as z:
        for i in range(0, size, 1000):
            z.write(data[i:i + 1000])
    got = out.getvalue()
    assert got.startswith(b"\x1f\x8b\x08") and one_gzip_member(got) == data


def test_pigz_chunks_are_primed_with_the_data_before_them(monkeypatch):
    """Each chunk deflated with the previous 32 KiB as its dictionary: a chunk repeating the one
    before costs next to nothing, as it does in one stream."""
    monkeypatch.setattr(initramfs_write, "GZIP_CHUNK", 8192)
    block = random.Random(0).randbytes(8192)
    out = io.BytesIO()
    with initramfs_write._Pigz(out, 1) as z:
        z.write(block * 8)
    assert one_gzip_member(out.getvalue()) == block * 8
    assert len(out.getvalue()) < 8192 * 1.2


def test_pigz_writes_nothing_more_after_a_failure():
    out = io.BytesIO()
    with pytest.raises(OSError), initramfs_write._Pigz(out, 1) as z:
        z.write(b"x" * 10)
        raise OSError("the spool could not be read")
    assert out.getvalue() == initramfs_write.GZIP_HEADER  # no trailer: never a member that looks whole


@pytest.mark.parametrize("kind", ["xz"])
def test_two_streams_compressed_at_once_unpack_to_the_same(tmp_path, monkeypatch, kind):
    src = write(tmp_path, EARLY + compress(kind, main_archive()))
    monkeypatch.setattr(initramfs_write, "SPLIT_BYTES", (10**12, 10**12))
    initramfs_slim.slim(src, str(tmp_path / "one.img"))
    monkeypatch.setattr(initramfs_write, "SPLIT_BYTES", (0, 10**12))
    initramfs_slim.slim(src, str(tmp_path / "two.img"))
    one, two = ((tmp_path / n).read_bytes()[len(EARLY):] for n in ("one.img", "two.img"))
    d = zlib.decompressobj(31) if kind == "gzip" else lzma.LZMADecompressor()
    first = d.decompress(two)
    assert d.eof and d.unused_data  # a second stream follows the first
    assert first.startswith(b"070701") and len(first) % 4 == 0  # cut where a member begins
    assert decompress(kind, two) == decompress(kind, one)
    assert initramfs.scan(str(tmp_path / "two.img")) == initramfs.scan(str(tmp_path / "one.img"))


def test_other_filesystems_by_their_alias(tmp_path):
    src = write(tmp_path, gzip.compress(main_archive()))
    r = initramfs_slim.slim(src, str(tmp_path / "slim.img"), fstypes=("xfs", "ext4"))
    assert {"xfs", "libcrc32c", "ext4"} <= set(r.kept)


def test_builtin_modules_need_nothing(tmp_path):
    mods = [m for m in MODULE_FILES if "xen-blkfront" not in m and "ext4" not in m]
    dep = "".join(line + "\n" for line in DEP.splitlines() if "xen-blkfront" not in line and "ext4.ko" not in line)
    builtin = "kernel/drivers/block/xen-blkfront.ko\nkernel/fs/ext4/ext4.ko\n"
    src = write(tmp_path, gzip.compress(main_archive(dep=dep, builtin=builtin, modules=mods)))
    r = initramfs_slim.slim(src, str(tmp_path / "slim.img"))
    assert r.slimmed and r.builtin == ("ext4", "xen-blkfront") and r.missing == ()
    assert "jbd2" not in r.kept and "xen-netfront" in r.kept  # a built-in ext4 pulls in no module


def test_a_missing_xen_driver_is_named(tmp_path):
    mods = [m for m in MODULE_FILES if "xen-netfront" not in m]
    src = write(tmp_path, gzip.compress(main_archive(modules=mods)))
    r = initramfs_slim.slim(src, str(tmp_path / "slim.img"))
    assert r.slimmed and r.missing == ("xen-netfront",)


@pytest.mark.parametrize("case,reason", [
    ("corrupt", "is truncated: its gzip data ends early"),
    ("garbage", "is not an initramfs"),
    ("no-modules.dep", "has kernel modules without a modules.dep for them (usr/lib/modules/6.1.0-99-amd64/kernel"),
    ("no-modules", "holds no kernel modules: nothing to leave out"),
    ("already-slim", "holds only what a Xen guest loads: nothing to leave out"),
])
def test_used_as_it_is_with_the_reason(tmp_path, case, reason):
    data = {"corrupt": lambda: gzip.compress(main_archive())[:-5000],
            "garbage": lambda: os.urandom(4096),
            "no-modules.dep": lambda: gzip.compress(main_archive(dep=None)),
            "no-modules": lambda: gzip.compress(main_archive(modules=[])),
            "already-slim": lambda: gzip.compress(main_archive(modules=MODULE_FILES[:6], firmware=False))}[case]()
    src = write(tmp_path, data)
    dst = tmp_path / "slim.img"
    r = initramfs_slim.slim(src, str(dst))
    assert not r.slimmed and r.path is None and r.reason.startswith(reason)
    assert r.size_after == r.size_before == len(data)
    assert not dst.exists() and os.listdir(tmp_path) == ["initrd.img"]  # nothing half-written, no temp left


def test_a_depmod_file_too_big_to_be_one(tmp_path, monkeypatch):
    monkeypatch.setattr(initramfs_slim, "MAX_TEXT", 500)  # modules.dep is ~900 bytes
    src = write(tmp_path, gzip.compress(main_archive()))
    r = initramfs_slim.slim(src, str(tmp_path / "slim.img"))
    assert not r.slimmed and r.reason.startswith("has a ") and "not one depmod or initramfs-tools writes" in r.reason
    assert not (tmp_path / "slim.img").exists()


def test_a_cache_it_cannot_write_keeps_the_guests_own(tmp_path, monkeypatch):
    src = write(tmp_path, gzip.compress(main_archive()))
    (tmp_path / "cache").write_text("a file where the cache directory should be")
    r = initramfs_slim.slim_cached(src)
    assert not r.slimmed and r.reason.startswith("could not be slimmed into")


def test_a_segment_that_loses_nothing_is_copied_as_it_is(tmp_path):
    late = gzip.compress(archive(member("late.conf", b"x")), 9)
    src = write(tmp_path, EARLY + gzip.compress(main_archive()) + late)
    dst = str(tmp_path / "slim.img")
    r = initramfs_slim.slim(src, dst)
    out = open(dst, "rb").read()
    assert out.startswith(EARLY) and out.endswith(late)
    assert "late.conf" in initramfs.scan(dst).names
    assert r.unpacked_after == initramfs.scan(dst).unpacked


class SlimmedTwice(Exception):
    pass


def slimmed_twice(*a, **k):
    raise SlimmedTwice


def test_cached_by_the_files_identity(tmp_path, monkeypatch):
    src = write(tmp_path, gzip.compress(main_archive()))
    first = initramfs_slim.slim_cached(src)
    assert first.slimmed and not first.cached and os.path.isfile(first.path)
    monkeypatch.setattr(initramfs_slim, "slim", slimmed_twice)
    again = initramfs_slim.slim_cached(src)
    assert again.cached and again.path == first.path and again.kept == first.kept
    assert again.seconds < first.seconds
    with pytest.raises(SlimmedTwice):
        initramfs_slim.slim_cached(src, fstypes=("xfs",))  # other parameters: another file


def test_cached_by_content_not_by_what_a_hostile_image_can_fake(tmp_path, monkeypatch):
    """Another image's initramfs of the same size, mtime and first and last 64 KiB (what
    initramfs.scan_cached's identity covers) is slimmed for itself, never given the first's file."""
    extra = [f"drivers/gpu/g{i}.ko" for i in range(60)]
    data = gzip.compress(main_archive(modules=MODULE_FILES + extra), 0)  # stored: the middle is a module's
    assert len(data) > 3 * 65536
    a = write(tmp_path, data, "a.img")
    mid = len(data) // 2
    b = write(tmp_path, data[:mid] + bytes([data[mid] ^ 1]) + data[mid + 1:], "b.img")
    st = os.stat(a)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert initramfs._key(a) == initramfs._key(b)
    first = initramfs_slim.slim_cached(a)
    monkeypatch.setattr(initramfs_slim, "slim", slimmed_twice)
    with pytest.raises(SlimmedTwice):
        initramfs_slim.slim_cached(b)
    assert initramfs_slim.slim_cached(a).path == first.path


def test_used_as_it_is_is_cached_too(tmp_path, monkeypatch):
    src = write(tmp_path, gzip.compress(main_archive(modules=[])))
    assert not initramfs_slim.slim_cached(src).slimmed
    monkeypatch.setattr(initramfs_slim, "slim", slimmed_twice)
    r = initramfs_slim.slim_cached(src)
    assert r.cached and r.reason.startswith("holds no kernel modules")


@pytest.mark.parametrize("line,names", [
    ("ata_generic all_generic_ide=1", {"ata_generic"}),
    ("-q dm-mod", {"dm_mod"}),
    ("${opts} -a i8042 atkbd ehci-pci", {"i8042", "atkbd", "ehci_pci"}),
    ("-qa a b", {"a", "b"}),
    ("$m", set()),
    ('-b "$(cat x)"', set()),
    ("-r nvme", set()),
    ("-d /root -S 6.1 ext4", {"ext4"}),
])
def test_modprobe_lines(line, names):
    assert initramfs_slim._modprobe_names(line.split()) == names


def test_millions_of_empty_members_are_refused_not_held_in_memory(tmp_path, monkeypatch):
    """Each member costs memory (its name, the slim spool's entry): a count no guest's has is refused."""
    monkeypatch.setattr(initramfs, "MAX_MEMBERS", 1000)
    src = tmp_path / "initrd.img"
    src.write_bytes(gzip.compress(archive(*(member(f"d/{i}") for i in range(1001))), 1))
    with pytest.raises(initramfs.Unreadable, match="holds more than 1,000 files"):
        initramfs.scan(str(src))
    r = initramfs_slim.slim(str(src), str(tmp_path / "slim.img"))
    assert r.path is None and "holds more than" in r.reason and not (tmp_path / "slim.img").exists()


KEY = planner._fs_key(("ext4",))  # how planner's boot facts key a Result (FSTYPES:PARAMS)


def aged(path, days: float) -> None:
    t = time.time() - days * 86400
    os.utime(path, (t, t))


def test_prune_keeps_what_generations_in_use_boot_and_what_was_used_lately(tmp_path, monkeypatch):
    cache, facts = tmp_path / "cache" / "initramfs", tmp_path / "facts"
    facts.mkdir()
    made = {}
    for i, n in enumerate("abc"):  # three images' initramfs (their gzip headers' mtimes differ)
        made[n] = initramfs_slim.slim_cached(write(tmp_path, gzip.compress(main_archive(), mtime=i), f"{n}.img"))
        (facts / f"deb-{n * 4}.json").write_text(json.dumps({"kernel": {}, "slim": {KEY: asdict(made[n])}}))
    initramfs.scan_cached(str(tmp_path / "a.img"))  # the memory check's scan, by the file's identity
    old = initramfs_slim.slim_cached(write(tmp_path, gzip.compress(main_archive(), mtime=9), "old.img"))
    (facts / "deb-eeee.json").write_text(json.dumps({"slim": {"ext4:0ldvers1": asdict(old)}}))  # an older VERSION's
    (cache / ".dead-run.img.x1y2").write_bytes(b"half")
    (facts / "deb-dddd.json").write_text("not remember_boot's")
    for p in cache.iterdir():
        aged(p, initramfs_prune.UNUSED_DAYS + 1)
    initramfs_slim.slim_cached(str(tmp_path / "c.img"))  # used just now: a deploy under way
    (cache / "young.img").write_bytes(b"")  # made just now
    gone = initramfs_prune.prune(str(facts), {"aaaa", "dddd", "eeee", "nothing"})
    stem = {n: os.path.basename(made[n].path)[:-4] for n in made}
    assert sorted(os.listdir(cache)) == sorted([f"{stem['a']}.img", f"{stem['a']}.json", f"{stem['c']}.img",
                                                f"{stem['c']}.json", "young.img"])
    old = os.path.basename(old.path)[:-4]
    assert {f"{stem['b']}.img", f"{stem['b']}.json", ".dead-run.img.x1y2", f"{old}.img"} <= set(gone) and len(gone) == 6
    assert initramfs_prune.prune(str(facts), {"aaaa"}) == []
    monkeypatch.setattr(initramfs_slim, "slim", slimmed_twice)
    assert initramfs_slim.slim_cached(str(tmp_path / "a.img")).cached  # further VMs of a still cost nothing
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path / "none"))
    assert initramfs_prune.prune(str(tmp_path / "none"), set()) == []  # no cache yet, no boot facts
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path / "a.img"))
    assert initramfs_prune.prune(str(tmp_path / "a.img"), set()) == []  # not directories: nothing raised


def test_rmxenvm_prunes_the_cache_by_the_vms_left(tmp_path, monkeypatch):
    from si_xen import journal
    from si_xen.cli import rmxenvm
    from si_xen.record import VmRecord

    state = tmp_path / "state"
    conf = tmp_path / "xen.conf"
    conf.write_text(f"[paths]\nstate_dir = {state}\nlog_dir = {tmp_path}/log\nlock_dir = {tmp_path}/lock\n")
    monkeypatch.setenv("SI_XEN_CONFIG", str(conf))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    (state / "images").mkdir(parents=True)
    kept = {}
    for i, (name, fpr) in enumerate((("web1", "aaaa"), ("web2", "bbbb"))):
        r = kept[name] = initramfs_slim.slim_cached(write(tmp_path, gzip.compress(main_archive(), mtime=i), f"{name}.img"))
        (state / "images" / f"deb-{fpr}.json").write_text(json.dumps({"slim": {KEY: asdict(r)}}))
        j = journal.Journal(str(state), name, VmRecord.from_json({"name": name, "pid": 1}))
        j.finish(VmRecord.from_json({"name": name, "image": "deb", "image_fingerprint": fpr}))
        j.close()
    for p in (tmp_path / "cache" / "initramfs").iterdir():
        aged(p, initramfs_prune.UNUSED_DAYS + 1)
    assert rmxenvm.body(["--yes", "--quiet", "web2"]) == 0
    web1 = os.path.basename(kept["web1"].path)[:-4]
    assert sorted(os.listdir(tmp_path / "cache" / "initramfs")) == [f"{web1}.img", f"{web1}.json"]
