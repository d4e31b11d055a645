"""capture.fromdisk on real disk images: a guest tree put on raw disks (one filesystem on the whole
disk; a partitioned one with /var on its own partition named by UUID), converted by qemu-img to
qcow2, VMDK, VHDX and VHD, attached, mounted read-only as the Foreign says and compared with the
tree; the refusals (one Fatal each), and nothing left behind: no loop device, no mount, no copy,
even after a SIGKILL."""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
import uuid
import zlib

import pytest

from si_xen.capture import fromdisk_lvm
from si_xen.capture.fromdisk import attached
from si_xen.errors import Fatal
from si_xen.record import DiskRecord
from si_xen.storage import backend
from si_xen.storage.mount import mount_tree_ro
from tests.conftest import need_tools
from tests.unit import fakeimage

from .harness import REPO, host_state, loop_fs, write

pytestmark = pytest.mark.integration
VAR_UUID = "0d6c5b0e-7a43-4c1e-9d0e-3f5a2b7c9e11"
FSTAB = f"""# the guest's own
/dev/vda1  /  ext4  errors=remount-ro 0 1
UUID={VAR_UUID}  /var  ext4  defaults 0 2
UUID=11111111-2222-3333-4444-555555555555 /data ext4 defaults 0 2
/dev/vda3  none  swap  sw 0 0
proc  /proc  proc  defaults 0 0
/dev/sr0  /media/cdrom0  udf,iso9660  user,noauto 0 0
server:/export  /mnt/nfs  nfs  defaults 0 0
"""


@pytest.fixture
def work(tmp_path, as_root):
    need_tools("qemu-img", "losetup", "partx", "blkid", "mkfs.ext4", "unshare", "rsync")
    before = host_state(str(tmp_path), hosts=("fromdisk",))
    yield tmp_path
    assert host_state(str(tmp_path), hosts=("fromdisk",)) == before  # no loop device on our files, no mount, no /run dir


def run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def sparse(path: str, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)


def guest_tree(tmp_path) -> str:
    """The golden tree, /var (the part for its own filesystem) included."""
    root = fakeimage.make(tmp_path / "tree", unpacked_mib=1)
    write(root, "/etc/fstab", FSTAB)
    write(root, "/var/lib/app/state", "kept on /var\n")
    os.makedirs(os.path.join(root, "data"))
    os.symlink("/etc/shadow", os.path.join(root, "etc/trap"))  # a guest link: stays one
    return root


def whole_disk(tmp_path, root: str) -> str:
    write(root, "/etc/fstab", "/dev/sda / ext4 defaults 0 1\n")
    img = str(tmp_path / "whole.raw")
    sparse(img, 64 * 2**20)
    run(["mkfs.ext4", "-q", "-d", root, img])
    return img


def mbr(img: str, parts: list[tuple[int, int, int]]) -> None:
    """A DOS partition table of (start MiB, size MiB, type) entries (no sfdisk on the test host)."""
    table = bytearray(512)
    table[440:444] = b"\x5e\x1e\x00\xc2"  # the disk's signature: PARTUUID=c2001e5e-0N
    for i, (start, size, kind) in enumerate(parts):
        struct.pack_into("<B3sB3sII", table, 446 + 16 * i, 0, b"\xfe\xff\xff", kind, b"\xfe\xff\xff",
                         start * 2048, size * 2048)
    table[510:512] = b"\x55\xaa"
    with open(img, "r+b") as f:
        f.write(table)


def gpt(img: str, parts: list[tuple[int, int, str, str]], types: dict[int, str] | None = None) -> None:
    """A GPT of (start MiB, size MiB, partition UUID, name) Linux partitions (``types``: index -> another
    type GUID), primary and backup."""
    sectors = os.path.getsize(img) // 512
    table = bytearray(128 * 128)
    for i, (start, size, puuid, name) in enumerate(parts):
        linux = uuid.UUID((types or {}).get(i, "0fc63daf-8483-4772-8e79-3d69d8477de4")).bytes_le
        struct.pack_into("<16s16sQQQ72s", table, 128 * i, linux, uuid.UUID(puuid).bytes_le, start * 2048,
                         (start + size) * 2048 - 1, 0, name.encode("utf-16-le"))

    def header(mine: int, other: int, entries: int) -> bytes:
        h = bytearray(struct.pack("<8sIIIIQQQQ16sQIII", b"EFI PART", 0x10000, 92, 0, 0, mine, other, 34,
                                  sectors - 34, uuid.uuid4().bytes_le, entries, 128, 128, zlib.crc32(table)))
        struct.pack_into("<I", h, 16, zlib.crc32(h))
        return bytes(h) + bytes(512 - len(h))

    mbr = bytearray(512)  # the protective MBR: one partition of type 0xEE over the whole disk
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, min(sectors - 1, 2**32 - 1))
    mbr[510:512] = b"\x55\xaa"
    with open(img, "r+b") as f:
        f.write(mbr + header(1, sectors - 1, 2) + table)
        f.seek((sectors - 33) * 512)
        f.write(table + header(sectors - 1, 1, sectors - 33))


def partitioned(tmp_path, root: str, third: str | None = None) -> str:
    """1 = / (its /var empty), 2 = /var (by UUID), 3 = swap (unformatted) or the tree ``third``."""
    img, rootonly, var = str(tmp_path / "disk.raw"), tmp_path / "rootonly", tmp_path / "var"
    run(["cp", "-a", root, str(rootonly)])
    run(["rm", "-rf", str(rootonly / "var")])
    os.mkdir(rootonly / "var")
    run(["cp", "-a", os.path.join(root, "var"), str(var)])
    sparse(img, 100 * 2**20)
    mbr(img, [(1, 48, 0x83), (49, 32, 0x83), (81, 18, 0x82)])
    # mke2fs writes each at its partition's offset (this test host's kernel reads no partition table)
    run(["mkfs.ext4", "-q", "-E", f"offset={2**20}", "-d", str(rootonly), img, "48M"])
    run(["mkfs.ext4", "-q", "-E", f"offset={49 * 2**20}", "-U", VAR_UUID, "-d", str(var), img, "32M"])
    if third:
        run(["mkfs.ext4", "-q", "-E", f"offset={81 * 2**20}", "-L", "rescue", "-d", third, img, "18M"])
    return img


def converted(tmp_path, raw: str, fmt: str) -> str:
    if fmt == "raw":
        return raw
    out = str(tmp_path / f"disk.{fmt}")
    run(["qemu-img", "convert", "-f", "raw", "-O", fmt, *(["-o", "force_size=on"] if fmt == "vpc" else []), raw, out])
    return out


def offset(loop: str) -> int:
    """Where a loop device starts in its file, in MiB: which partition it is."""
    with open(f"/sys/block/{os.path.basename(loop)}/loop/offset") as f:
        return int(f.read()) // 2**20


def same_tree(foreign, root: str, where) -> None:
    """The Foreign's filesystems mounted as the capture mounts them (storage.mount.mount_tree_ro,
    storage "given"): the tree, byte for byte."""
    disks = [DiskRecord("", mp, fs, "", dev) for dev, fs, mp in foreign.disks]
    mounted, skipped = mount_tree_ro(disks, backend("given"), str(where))
    try:
        assert skipped == []
        diff = run(["rsync", "-n", "-a", "-c", "-i", "--numeric-ids", "--delete", "--exclude=lost+found",
                    f"{root}/", f"{where}/"]).splitlines()
        # mke2fs -d gives a filesystem's own root directory the time of the mkfs, not the tree's
        tops = {".d..t...... " + ("./" if mp == "/" else mp.strip("/") + "/") for _d, _fs, mp in foreign.disks}
        assert [line for line in diff if line not in tops] == [], diff
    finally:
        for at in reversed(mounted):
            subprocess.run(["umount", at], check=True)


def test_whole_disk_raw(work):
    root = guest_tree(work)
    img = whole_disk(work, root)
    said: list[str] = []
    with attached(img, str(work), said.append) as f:
        assert f.fmt == "raw" and [(fs, mp) for _d, fs, mp in f.disks] == [("ext4", "/")]
        assert f.sizes == {"/": 64}
        assert f.notes == ()
        (work / "m").mkdir()
        same_tree(f, root, work / "m")
    assert not any("convert" in s for s in said), said  # raw: attached as it is


def test_gpt_by_partuuid_and_partlabel(work):
    root = guest_tree(work)
    root_uuid = "6a1b2c3d-0000-4000-8000-00000000abcd"
    write(root, "/etc/fstab", f"PARTUUID={root_uuid} / ext4 defaults 0 1\nPARTLABEL=guest\\040var /var ext4 defaults 0 2\n")
    img, rootonly = str(work / "gpt.raw"), work / "rootonly"
    run(["cp", "-a", root, str(rootonly)])
    run(["find", str(rootonly / "var"), "-mindepth", "1", "-delete"])
    sparse(img, 100 * 2**20)
    gpt(img, [(1, 48, root_uuid, "guest root"), (49, 40, "6a1b2c3d-0000-4000-8000-00000000beef", "guest var")])
    run(["mkfs.ext4", "-q", "-E", f"offset={2**20}", "-d", str(rootonly), img, "48M"])
    run(["mkfs.ext4", "-q", "-E", f"offset={49 * 2**20}", "-d", os.path.join(root, "var"), img, "40M"])
    with attached(converted(work, img, "qcow2"), str(work), lambda s: None) as f:
        assert [(offset(d), fs, mp) for d, fs, mp in f.disks] == [(1, "ext4", "/"), (49, "ext4", "/var")]
        (work / "m").mkdir()
        same_tree(f, root, work / "m")


def test_whole_disk_xfs_vhdx(work):
    need_tools("mkfs.xfs")
    root = guest_tree(work)
    write(root, "/etc/fstab", "LABEL=guestroot / xfs defaults 0 1\n")
    img = str(work / "xfs.raw")
    sparse(img, 320 * 2**20)
    run(["mkfs.xfs", "-q", "-L", "guestroot", img])
    (work / "fill").mkdir()
    subprocess.run(["mount", "-o", "loop", img, str(work / "fill")], check=True)
    try:
        run(["cp", "-a", f"{root}/.", str(work / "fill")])
    finally:
        subprocess.run(["umount", str(work / "fill")], check=True)
    with attached(converted(work, img, "vhdx"), str(work), lambda s: None) as f:
        assert [(fs, mp) for _d, fs, mp in f.disks] == [("xfs", "/")]
        (work / "m").mkdir()
        same_tree(f, root, work / "m")


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "vmdk", "vhdx", "vpc"])
def test_partitioned(work, fmt):
    root = guest_tree(work)
    img = converted(work, partitioned(work, root), fmt)
    said: list[str] = []
    with attached(img, str(work), said.append) as f:
        assert f.fmt == fmt and f.sizes == {"/": 48, "/var": 32}
        assert [(offset(d), fs, mp) for d, fs, mp in f.disks] == [(1, "ext4", "/"), (49, "ext4", "/var")]
        (work / "m").mkdir()
        same_tree(f, root, work / "m")
        if fmt != "raw":  # the copy: unnamed, in the work dir, gone with the loop device
            assert any("sparse raw copy" in s for s in said), said
            assert f"({work}/#" in run(["losetup", "-a"])
            assert not [n for n in os.listdir(work) if "#" in n]
    assert "the guest's /: partition 1 (ext4); /var: partition 2 (ext4)" in said, said
    warned = [s for s in said if s.startswith("WARNING")]
    assert len(warned) == 1 and "/data" in warned[0] and "not on this disk image" in warned[0], said


def test_vmdk_with_a_flat_extent_by_relative_path(work, monkeypatch):
    """ESXi's layout: a descriptor and its -flat.vmdk beside it, named relative to the cwd."""
    root = guest_tree(work)
    (work / "vm").mkdir()
    run(["qemu-img", "convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=monolithicFlat",
         whole_disk(work, root), str(work / "vm/guest.vmdk")])
    monkeypatch.chdir(work)
    with attached("vm/guest.vmdk", str(work), lambda s: None) as f:
        assert f.fmt == "vmdk" and [(fs, mp) for _d, fs, mp in f.disks] == [("ext4", "/")]
        (work / "m").mkdir()
        same_tree(f, root, work / "m")


def test_notes(work):
    root = guest_tree(work)
    write(root, "/usr/bin/vmtoolsd", "not run\n")
    with open(os.path.join(root, "boot/initrd.img-6.1.0-99-amd64"), "wb") as f:
        f.write(fakeimage.cpio({"init": b"#!/bin/sh\n", "lib/modules/6.1.0-99-amd64/virtio_blk.ko": b"\0" * 64}))
    with attached(whole_disk(work, root), str(work), lambda s: None) as f:
        assert len(f.notes) == 2, f.notes
        assert "VMware tools" in f.notes[0] and "open-vm-tools" in f.notes[0]
        assert "virtio-blk (KVM)" in f.notes[1] and "xen-blkfront" in f.notes[1]


@pytest.mark.parametrize("rescue_root", ["UUID=0000-not-here", "LABEL=rescue"])
def test_several_with_an_fstab(work, rescue_root):
    """A rescue system beside the guest: the root is the one whose fstab mounts it on /; two that
    do are one Fatal naming both."""
    root, rescue = guest_tree(work), str(work / "rescue")
    fakeimage.make(rescue, unpacked_mib=1)
    write(rescue, "/etc/fstab", f"{rescue_root} / ext4 defaults 0 1\n")
    img = partitioned(work, root, rescue)
    if rescue_root.startswith("UUID"):
        with attached(img, str(work), lambda s: None) as f:
            assert [(offset(d), mp) for d, _fs, mp in f.disks] == [(1, "/"), (49, "/var")]
            (work / "m").mkdir()
            same_tree(f, root, work / "m")
    else:
        fatal(img, str(work), "more than one system", "partition 1 (ext4)", "partition 3 (ext4 LABEL=rescue)")


def fatal(path: str, work_dir: str, *words: str) -> str:
    with pytest.raises(Fatal) as e:
        with attached(path, work_dir, lambda s: None):
            pytest.fail("attached despite a bad image")
    assert all(w in str(e.value) for w in words), str(e.value)
    return str(e.value)


def test_missing_and_directory(work):
    fatal(str(work / "nope.vmdk"), str(work), "does not exist")
    fatal(str(work), str(work), "is a directory")


def test_no_root(work):
    img = str(work / "random.img")
    with open(img, "wb") as f:
        f.write(os.urandom(4 * 2**20))  # qemu-img calls it raw: no filesystem in it
    fatal(img, str(work), "no root filesystem", "none holds etc/fstab", "the whole disk (no filesystem)")
    bare = str(work / "bare.raw")  # a filesystem, but no guest's /
    sparse(bare, 16 * 2**20)
    run(["mkfs.ext4", "-q", bare])
    fatal(bare, str(work), "none holds etc/fstab", "the whole disk (ext4)")
    looped = work / "looped"  # a planted link loop where the fstab would be
    os.makedirs(looped / "etc")
    os.symlink("/etc/fstab", looped / "etc/fstab")
    run(["mkfs.ext4", "-q", "-d", str(looped), bare])
    fatal(bare, str(work), "none holds etc/fstab", "/etc/fstab too many levels of symbolic links")


def test_formats_refused(work):
    vdi = str(work / "disk.vdi")
    run(["qemu-img", "create", "-q", "-f", "vdi", vdi, "16M"])
    fatal(vdi, str(work), "format vdi", "qemu-img convert")
    base = str(work / "base.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"])
    top = str(work / "top.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
    fatal(top, str(work), "not self-contained", base)
    broken = str(work / "broken.qcow2")
    with open(base, "rb") as src, open(broken, "wb") as dst:
        dst.write(src.read(64))  # a header, then nothing
    fatal(broken, str(work), "cannot be read")


def test_lvm_where_the_host_has_no_device_mapper(work):
    """A disk whose partition 1 is an LVM PV of VG lv-guest-vg (pvcreate and vgcreate write their
    metadata without device-mapper): one FATAL naming the VG and the fix, nothing left behind."""
    need_tools("pvcreate", "vgcreate", "partx")
    if fromdisk_lvm.device_mapper_ok():
        pytest.skip("this host has device-mapper: the LVM tier's fromdisk_lvm scenario reads such disks")
    img = str(work / "lvm.raw")
    sparse(img, 32 * 2**20)
    mbr(img, [(1, 30, 0x8E)])
    loop = run(["losetup", "--find", "--show", "--offset", str(2**20), "--sizelimit", str(30 * 2**20), img]).strip()
    try:  # --devices: this loop device only, whatever VGs the host has; no backup of it in the host's /etc/lvm
        made = subprocess.run(["vgcreate", "-q", "--config", "backup { backup = 0 archive = 0 }", "--devices", loop,
                               "lv-guest-vg", loop], capture_output=True, text=True)
    finally:
        run(["losetup", "-d", loop])
    assert made.returncode == 0, made.stderr
    fatal(img, str(work), "LVM (volume group lv-guest-vg on partition 1 (LVM2_member))", "no device-mapper",
          "run si_getxenimage on a host with device-mapper (modprobe dm-mod)")


def test_no_room_for_the_copy(work):
    root = guest_tree(work)
    with open(os.path.join(root, "var/big"), "wb") as f:
        f.write(os.urandom(40 * 2**20))
    write(root, "/etc/fstab", "/dev/sda / ext4 defaults 0 1\n")
    img = str(work / "big.raw")
    sparse(img, 96 * 2**20)
    run(["mkfs.ext4", "-q", "-d", root, img])
    qcow = converted(work, img, "qcow2")
    with loop_fs(work, "small", 64 * 2**20, ["mkfs.ext4", "-q"]) as small:
        fatal(qcow, small, "MiB free", "raw copy", "work directory")
        assert os.listdir(small) == ["lost+found"]


def test_error_in_the_block_cleans_up(work):
    img = converted(work, whole_disk(work, guest_tree(work)), "qcow2")
    with pytest.raises(KeyboardInterrupt):
        with attached(img, str(work), lambda s: None) as f:
            assert os.path.exists(f.disks[0][0])
            raise KeyboardInterrupt


def test_sigkill_leaves_nothing(work):
    img = converted(work, whole_disk(work, guest_tree(work)), "qcow2")
    code = ("import sys, time\nfrom si_xen.capture.fromdisk import attached\n"
            "with attached(sys.argv[1], sys.argv[2], lambda s: None) as f:\n"
            "    print(f.disks[0][0], flush=True)\n    time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", code, img, str(work)], stdout=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=REPO))
    dev = p.stdout.readline().strip()
    assert dev.startswith("/dev/loop"), dev
    assert str(work) in run(["losetup", "-a"])
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    for _ in range(50):  # autoclear: the kernel detaches it when the killed process's file closes
        if str(work) not in run(["losetup", "-a"]):
            break
        time.sleep(0.1)
    assert str(work) not in run(["losetup", "-a"])


def test_sigterm_while_converting(work):
    """SIGTERM mid-conversion unwinds as an exception: qemu-img killed, the copy gone, nothing attached."""
    img = converted(work, whole_disk(work, guest_tree(work)), "qcow2")
    fake = work / "bin"
    fake.mkdir()
    (fake / "qemu-img").write_text(f"#!/bin/bash\n[ \"$1\" = convert ] && echo $$ > {work}/pid && exec sleep 60\n"
                                   f"exec {run(['which', 'qemu-img']).strip()} \"$@\"\n")
    (fake / "qemu-img").chmod(0o755)
    code = ("import sys\nfrom si_xen.capture.fromdisk import attached\n"
            "with attached(sys.argv[1], sys.argv[2], lambda s: print(s, flush=True)):\n    pass\n")
    p = subprocess.Popen([sys.executable, "-c", code, img, str(work)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=dict(os.environ, PYTHONPATH=REPO, PATH=f"{fake}:{os.environ['PATH']}"))
    for line in p.stdout:
        if "converting" in line:
            break
    else:
        pytest.fail(f"no conversion: {p.communicate()}")
    for _ in range(50):
        if (work / "pid").exists():
            break
        time.sleep(0.1)
    pid = int((work / "pid").read_text())
    os.kill(p.pid, signal.SIGTERM)
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 1 and "Interrupted: SIGTERM" in err, err
    assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_the_captured_layout_is_the_disks_own(work):
    """si_getxenimage --from-disk writes the disk's own partitions into disks-layout.xml: their
    numbers, the swap partition it does not read, the bootloader SystemImager installs."""
    from si_xen.image.metadata import parse_layout

    from .harness import make_env

    img = partitioned(work, guest_tree(work))
    os.makedirs(work / "images")
    env = make_env(work / "e", str(work / "images"))
    env.run("getxenimage", "--from-disk", img, "v2v", check=True)
    with open(work / "images" / "v2v" / "etc/systemimager/disks-layout.xml") as f:
        text = f.read()
    got = sorted((e.real_dev, e.mountpoint, e.fs, e.size_mib) for e in parse_layout(text, "disks-layout.xml")
                 if e.fs in ("ext4", "swap"))
    assert got == [("/dev/sda1", "/", "ext4", 48), ("/dev/sda2", "/var", "ext4", 32), ("/dev/sda3", "swap", "swap", 18)]
    assert '<bootloader flavor="grub2" install_type="legacy"' in text and 'label_type="msdos"' in text


@pytest.mark.parametrize("bios_boot", [True, False])
def test_a_gpt_disk_booted_legacy_keeps_or_gets_a_bios_boot_partition(work, bios_boot):
    """grub-pc on a gpt disk needs a BIOS boot partition: the disk's own is in the layout as it was
    (number, size), else one of 1 MiB is added under a free number; autoinstallscript.conf flags it
    bios_grub, disks-layout.xml cannot (SystemImager 5's xsd) and the summary says how to type it."""
    from .harness import make_env

    root = guest_tree(work)
    root_uuid = "6a1b2c3d-0000-4000-8000-00000000abcd"
    write(root, "/etc/fstab", f"PARTUUID={root_uuid} / ext4 defaults 0 1\n")
    img = str(work / "gpt.raw")
    sparse(img, 100 * 2**20)
    parts = [(4, 60, root_uuid, "root")]
    if bios_boot:
        parts.insert(0, (1, 2, "6a1b2c3d-0000-4000-8000-00000000b105", "bios"))
    gpt(img, parts, {0: "21686148-6449-6e6f-744e-656564454649"} if bios_boot else None)
    run(["mkfs.ext4", "-q", "-E", f"offset={4 * 2**20}", "-d", root, img, "60M"])
    os.makedirs(work / "images")
    env = make_env(work / "e", str(work / "images"))
    cp = env.run("getxenimage", "--from-disk", img, "gptbios", check=True)
    meta = work / "images" / "gptbios" / "etc/systemimager"
    v5, v4 = (meta / "disks-layout.xml").read_text(), (meta / "autoinstallscript.conf").read_text()
    part = re.compile(r'<part num="(\d+)" size="([^"]+)" p_type="primary" p_name="-" flags="([^"]+)"')
    # the disk's own: number 1, 2 MiB, root number 2; added: root is number 1, so the next free one, 1 MiB
    want, root_num = (("1", "2"), "2") if bios_boot else (("2", "1"), "1")
    got4 = part.findall(v4)
    assert sorted(got4) == sorted([(*want, "bios_grub"), (root_num, "60", "-")]), got4
    assert [p for p in part.findall(v5) if p[:2] == want] == [(*want, "-")] and 'install_type="legacy"' in v5
    assert f'real_dev="/dev/sda{root_num}" mp="/"' in v5 and f"sgdisk -t {want[0]}:ef02" in v5
    assert f"sgdisk -t {want[0]}:ef02" in cp.stdout + cp.stderr, "the summary says how to type it"


LVS_META = """
    logical_volumes {
        my-root {
            id = "aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaa1"
            status = ["READ", "WRITE", "VISIBLE"]
            segment_count = 2
            segment1 { start_extent = 0  extent_count = 8  type = "striped"  stripe_count = 1  stripes = ["pv0", 0] }
            segment2 { start_extent = 8  extent_count = 8  type = "striped"  stripe_count = 1  stripes = ["pv0", 40] }
        }
        var {
            id = "aaaaaa-aaaa-aaaa-aaaa-aaaa-aaaa-aaaaa2"
            status = ["READ", "WRITE", "VISIBLE"]
            segment_count = 1
            segment1 { start_extent = 0  extent_count = 16  type = "striped"  stripe_count = 2  stripe_size = 128
                       stripes = ["pv0", 8, "pv0", 24] }
        }
    }
"""


def test_lvm_tables_from_real_metadata_read_the_lvs_extents(work):
    """LVM's own metadata (written without device-mapper: vgcreate, then LVs added by vgcfgrestore,
    a linear LV in two pieces and a 2-stripe one, in a VG named vg0 like a host's): the tables
    si-xen would load, read back through a loop device as device-mapper would, give each logical
    extent its physical extent (each PE of the disk is marked with its number)."""
    need_tools("vgcreate", "vgcfgbackup", "vgcfgrestore", "partx")
    img, meta = str(work / "lvm.raw"), str(work / "vg.meta")
    sparse(img, 420 * 2**20)
    mbr(img, [(1, 419, 0x8E)])
    quiet = ["-q", "--config", "backup { backup = 0 archive = 0 }"]
    loop = run(["losetup", "--find", "--show", "--offset", str(2**20), img]).strip()
    try:
        run(["vgcreate", *quiet, "--devices", loop, "lv-fd-tmp", loop])
        run(["vgcfgbackup", *quiet, "--devices", loop, "-f", meta, "lv-fd-tmp"])
        text = open(meta).read().replace("lv-fd-tmp {", "vg0 {", 1)
        at = text.rindex("}")
        with open(meta, "w") as f:
            f.write(text[:at] + LVS_META + text[at:])
        subprocess.run(["vgcfgrestore", *quiet, "--devices", loop, "-f", meta, "vg0"], input="y\n", text=True,
                       capture_output=True, check=True)
    finally:
        run(["losetup", "-d", loop])
    with open(img, "r+b") as f:  # each 4 MiB physical extent (from pe_start, 1 MiB in) marked with its number
        for pe in range(104):
            f.seek(2**20 + 2**20 + pe * 4 * 2**20)
            f.write(b"PE%04d" % pe + bytes(128 * 512 - 6))  # the first stripe chunk of each
            f.seek(2**20 + 2**20 + pe * 4 * 2**20 + 128 * 512)
            f.write(b"PE%04d+" % pe)
    loop = run(["losetup", "--read-only", "--find", "--show", "--offset", str(2**20), img]).strip()
    try:
        tables = fromdisk_lvm.lv_tables(img, [loop])
        fd = os.open(loop, os.O_RDONLY)
        try:
            def read(lv: str, sector: int) -> bytes:  # device-mapper's linear and striped targets
                for line in tables[("vg0", lv)].splitlines():
                    f = line.split()
                    start, size = int(f[0]), int(f[1])
                    if start <= sector < start + size:
                        s = sector - start
                        if f[2] == "linear":
                            return os.pread(fd, 7, (int(f[4]) + s) * 512)
                        n, chunk = int(f[3]), int(f[4])
                        stripe, row = (s // chunk) % n, s // chunk // n
                        return os.pread(fd, 7, (int(f[6 + 2 * stripe]) + row * chunk + s % chunk) * 512)
                raise AssertionError(f"{lv}: sector {sector} is in no segment")

            le = 8192  # sectors in an extent
            assert [read("my-root", k * le)[:6] for k in (0, 7, 8, 15)] == [b"PE0000", b"PE0007", b"PE0040", b"PE0047"]
            # 2 stripes of 128 sectors: chunk 0 on the first (PE 8), chunk 1 on the second (PE 24), chunk 2 back
            assert [read("var", s) for s in (0, 128, 256)] == [b"PE0008\0", b"PE0024\0", b"PE0008+"]
            assert read("var", 16 * le - 1) is not None and sorted(tables) == [("vg0", "my-root"), ("vg0", "var")]
        finally:
            os.close(fd)
    finally:
        run(["losetup", "-d", loop])
