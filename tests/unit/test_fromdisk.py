"""capture.fromdisk without a disk: the fstab read as the guest means it (every way it names a
filesystem of this disk, what is no filesystem of it), the notes read from a guest tree, and the
images refused on qemu-img's word before anything is attached."""

from __future__ import annotations

import json
import os

import pytest

from si_xen.capture import fromdisk
from si_xen.capture.fromdisk_notes import notes
from si_xen.capture.fromdisk_probe import Fs, find, mapping, names_as_root, parse_fstab, partitions_named
from si_xen.errors import Fatal
from si_xen.guestfs import Guest
from tests.unit import fakeimage

ROOT = Fs("/dev/loop1", "ext4", 1, "aaaa-1", "root", "c2001e5e-01", "")
FSS = [ROOT,
       Fs("/dev/loop2", "xfs", 2, "B0B0-2", "my var", "c2001e5e-02", ""),
       Fs("/dev/loop3", "ext4", 3, "cccc-3", "", "c2001e5e-03", "home part"),
       Fs("/dev/loop4", "btrfs", 4, "dddd-4", "", "", ""),
       Fs("/dev/loop5", "", 5)]


def test_parse_fstab_escapes_comments_and_short_lines():
    assert parse_fstab("# c\n  #d e\nLABEL=my\\040var#1 /srv/a\\040b xfs ro 0 0 # tail\n/dev/sda1 /\n\n") == [
        ("LABEL=my var#1", "/srv/a b", "xfs", "ro"), ("/dev/sda1", "/", "auto", "defaults")]


@pytest.mark.parametrize("spec, dev", [
    ("UUID=AAAA-1", "/dev/loop1"), ("UUID=b0b0-2", "/dev/loop2"), ("LABEL=my var", "/dev/loop2"),
    ("LABEL=My var", None), ("PARTUUID=C2001E5E-03", "/dev/loop3"), ("PARTLABEL=home part", "/dev/loop3"),
    ("/dev/disk/by-uuid/cccc-3", "/dev/loop3"), ("/dev/disk/by-label/my\\x20var", "/dev/loop2"),
    ("/dev/disk/by-partuuid/c2001e5e-02", "/dev/loop2"), ("/dev/sda2", "/dev/loop2"), ("/dev/vda3", "/dev/loop3"),
    ("/dev/xvda1", "/dev/loop1"), ("/dev/hda2", "/dev/loop2"), ("/dev/nvme0n1p3", "/dev/loop3"),
    ("/dev/sdb1", None), ("/dev/sda9", None), ("/dev/mapper/vg-root", None), ("/dev/disk/by-id/ata-x", None),
    ("UUID=", None)])
def test_find(spec, dev):
    found = find(spec, FSS, {"a", "nvme0n1"})
    assert (found.dev if found else None) == dev


def test_find_the_whole_disk():
    whole = [Fs("/dev/loop7", "ext4", 0)]
    assert find("/dev/vda", whole, {"a"}) == whole[0]
    assert find("/dev/vda1", whole, {"a"}) is None


def test_mapping_keeps_this_disks_filesystems_and_says_what_it_leaves():
    fstab = ("/dev/sdb1 / ext4 defaults 0 1\n"  # the guest's first disk was sdb: its partitions are sdbN
             "/dev/sdb2 /var xfs defaults 0 2\nUUID=cccc-3 /home/ ext4 defaults 0 2\n"
             "/dev/sda1 /data ext4 defaults 0 2\nUUID=dddd-4 /srv btrfs defaults 0 0\n"
             "/dev/sdb5 none swap sw 0 0\nproc /proc proc defaults 0 0\ntmpfs /tmp tmpfs defaults 0 0\n"
             "nas:/e /mnt/e nfs defaults 0 0\n//nas/s /mnt/s cifs defaults 0 0\n/srv/x /home/x none bind 0 0\n"
             "/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0\n/dev/sdc1 /backup ext4 _netdev 0 0\n"
             "UUID=cccc-3 /again ext4 defaults 0 0\n")
    disks, left = mapping(fstab, FSS, ROOT)
    assert disks == [("/dev/loop1", "ext4", "/"), ("/dev/loop3", "ext4", "/home"), ("/dev/loop2", "xfs", "/var")]
    assert len(left) == 2, left
    assert left[0].startswith("/data (/dev/sda1 in the guest's fstab) is not on this disk image")
    assert left[1].startswith("/srv (UUID=dddd-4) is btrfs, which si_getxenimage does not read")


def test_mapping_puts_a_parent_before_its_children():
    fstab = "LABEL=root / ext4 defaults 0 1\n/dev/sda3 /var/log ext4 defaults 0 2\n/dev/sda2 /var xfs defaults 0 2\n"
    assert [mp for _d, _t, mp in mapping(fstab, FSS, ROOT)[0]] == ["/", "/var", "/var/log"]


def test_names_as_root():
    assert names_as_root("LABEL=root / ext4 defaults 0 1\n", FSS) == ROOT
    assert names_as_root("/dev/vda3 / ext4 defaults 0 1\n", FSS) == FSS[2]
    assert names_as_root("/dev/root / ext4 defaults 0 1\n", FSS) is None
    assert names_as_root("", FSS) is None


def _initrd(root, ver: str, files: dict[str, bytes]) -> None:
    with open(os.path.join(root, f"boot/initrd.img-{ver}"), "wb") as f:
        f.write(fakeimage.cpio(files))


def test_notes_tools_and_initramfs(tmp_path):
    root = fakeimage.make(tmp_path / "g", unpacked_mib=1)
    assert notes(Guest(root)) == []  # no module at all in its initramfs, no config: nothing to say
    os.makedirs(os.path.join(root, "usr/sbin"))
    open(os.path.join(root, "usr/sbin/hv_kvp_daemon"), "w").close()
    _initrd(root, "6.1.0-99-amd64", {"lib/modules/6.1.0-99-amd64/kernel/vmw_pvscsi.ko.xz": b"x",
                                     "lib/modules/6.1.0-99-amd64/kernel/hv_storvsc.ko": b"x"})
    found = notes(Guest(root))
    assert len(found) == 2, found
    assert found[0].startswith("Hyper-V daemons installed (/usr/sbin/hv_kvp_daemon)") and "hyperv-daemons" in found[0]
    assert "hv-storvsc (Hyper-V), vmw-pvscsi (VMware) but not xen-blkfront" in found[1]
    _initrd(root, "6.1.0-99-amd64", {"lib/modules/x/vmw_pvscsi.ko": b"x", "lib/modules/x/xen-blkfront.ko": b"x"})
    assert len(notes(Guest(root))) == 1  # Xen's driver there too: the initramfs boots under Xen


def test_notes_builtin_drivers_and_confinement(tmp_path):
    root = fakeimage.make(tmp_path / "g", unpacked_mib=1)
    with open(os.path.join(root, "boot/config-6.1.0-99-amd64"), "w") as f:
        f.write("CONFIG_VIRTIO_BLK=y\nCONFIG_XEN_BLKDEV_FRONTEND=m\n")
    found = notes(Guest(root))
    assert len(found) == 1 and "virtio-blk (KVM) but not xen-blkfront" in found[0], found
    with open(os.path.join(root, "boot/config-6.1.0-99-amd64"), "w") as f:
        f.write("CONFIG_VIRTIO_BLK=y\nCONFIG_XEN_BLKDEV_FRONTEND=y\n")
    assert notes(Guest(root)) == []  # built in: no initramfs needed
    # a guest link out of the tree is resolved inside it: the host's files are not the guest's
    os.makedirs(os.path.join(root, "usr/bin"))
    os.symlink("/proc/self/exe", os.path.join(root, "usr/bin/vmtoolsd"))
    assert notes(Guest(root)) == []
    os.makedirs(os.path.join(root, "etc/vmware-tools"))
    assert len(notes(Guest(root))) == 1 and "VMware tools installed (/etc/vmware-tools)" in notes(Guest(root))[0]


def _info(fp, path: str, **info) -> None:
    fp.register(["qemu-img", "info", "--output=json", path], stdout=json.dumps({"virtual-size": 2**30, **info}))


@pytest.mark.parametrize("info, words", [
    ({"format": "vdi"}, ["of format vdi", "qemu-img convert -O qcow2"]),
    ({"format": "qcow2", "backing-filename": "/etc/shadow"}, ["not self-contained", "/etc/shadow", "flatten"]),
    ({"format": "qcow2", "format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}},
     ["not self-contained", "/dev/sda"]),
    ({"format": "qcow2", "encrypted": True}, ["is encrypted"]),
    ({"format": "qcow2", "format-specific": {"type": "qcow2", "data": {"corrupt": True}}}, ["marked corrupt"]),
    ({"format": "vmdk", "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "/dev/sda"}]}}},
     ["reads /dev/sda", "not a file beside it"]),
    ({"format": "vmdk", "format-specific": {"type": "vmdk", "data": {"extents": [{"filename": "../x-flat.vmdk"}]}}},
     ["reads ../x-flat.vmdk"]),
])
def test_inspect_refuses(fp, tmp_path, info, words):
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    (tmp_path.parent / "x-flat.vmdk").write_bytes(b"")
    _info(fp, str(img), **info)
    with pytest.raises(Fatal) as e:
        fromdisk.inspect(str(img))
    assert all(w in str(e.value) for w in words), str(e.value)


def test_inspect_takes_a_vmdk_with_its_extents_beside_it(fp, tmp_path):
    desc, flat = tmp_path / "vm.vmdk", tmp_path / "vm-flat.vmdk"
    desc.write_text("# Disk DescriptorFile\n")
    flat.write_bytes(b"")
    _info(fp, str(desc), format="vmdk", **{"format-specific": {"type": "vmdk", "data": {"extents": [
        {"filename": str(flat)}, {"filename": "vm-flat.vmdk"}]}}})
    assert fromdisk.inspect(str(desc))["format"] == "vmdk"


def test_inspect_an_unreadable_image(fp, tmp_path):
    img = tmp_path / "disk.qcow2"
    img.write_bytes(b"QFI\xfb")
    fp.register(["qemu-img", "info", "--output=json", str(img)], returncode=1,
                stderr="qemu-img: Could not open 'disk.qcow2': Image is not in qcow2 format\n")
    with pytest.raises(Fatal) as e:
        fromdisk.inspect(str(img))
    assert "cannot be read: Could not open 'disk.qcow2': Image is not in qcow2 format" in str(e.value)


def test_notes_on_planted_link_loops(tmp_path):
    root = fakeimage.make(tmp_path / "g", unpacked_mib=1)
    os.makedirs(os.path.join(root, "usr/bin"))
    os.symlink("/usr/bin/vmtoolsd", os.path.join(root, "usr/bin/vmtoolsd"))
    os.rename(os.path.join(root, "boot"), os.path.join(root, "oldboot"))
    os.symlink("/boot", os.path.join(root, "boot"))
    assert notes(Guest(root)) == []  # nothing there: no crash either


def test_the_layout_holds_every_partition_the_fstab_names_by_its_number():
    """Read ones with their mount points; swap (unformatted: no type) and an ESP si-xen does not read
    too; a partition the fstab does not name, and entries not on this disk, not."""
    fss = [Fs("/dev/loop1", "ext4", 1, size=48 << 20), Fs("/dev/loop2", "vfat", 2, "AB12-CD34", size=256 << 20),
           Fs("/dev/loop3", "", 3, size=18 << 20), Fs("/dev/loop4", "ext4", 4, size=8 << 20)]
    fstab = ("/dev/sda1 / ext4 defaults 0 1\nUUID=AB12-CD34 /boot/efi vfat umask=0077 0 1\n/dev/sda3 none swap sw 0 0\n"
             "/dev/sdb1 /data ext4 defaults 0 2\nproc /proc proc defaults 0 0\n")
    assert partitions_named(fstab, fss, {"/dev/loop1": "/"}) == [
        (1, "ext4", "/", 48), (2, "vfat", "/boot/efi", 256), (3, "swap", "", 18)]


def test_the_source_disks_bios_boot_partition_is_in_the_layout():
    """No filesystem and no fstab line, but its GPT type: kept under its number and size (not a second one)."""
    fss = [Fs("/dev/loop1", "", 1, size=1 << 20, ptype="21686148-6449-6E6F-744E-656564454649"),
           Fs("/dev/loop2", "ext4", 2, size=48 << 20, ptype="0fc63daf-8483-4772-8e79-3d69d8477de4"),
           Fs("/dev/loop3", "", 3, size=5 << 20, ptype="0fc63daf-8483-4772-8e79-3d69d8477de4")]
    assert partitions_named("/dev/sda2 / ext4 defaults 0 1\n", fss, {"/dev/loop2": "/"}) == [
        (1, "bios_grub", "", 1), (2, "ext4", "/", 48)]


@pytest.mark.parametrize("head, tail, refused", [
    (b"", b"", False), (b"\xeb\x63\x90" + bytes(509), bytes(512), False),  # raw: a boot sector, or nothing
    (b"QFI\xfb\x00\x00\x00\x03", b"", True), (b"KDMV", b"", True), (b"# Disk DescriptorFile\n", b"", True),
    (b"vhdxfile", b"", True), (bytes(1024), b"conectix" + bytes(504), True),  # a VHD's footer
    (bytes(64) + b"\x7f\x10\xda\xbe", b"", True)])  # a VDI
def test_without_qemu_img_a_raw_image_is_read_the_others_refused(fp, tmp_path, monkeypatch, head, tail, refused):
    monkeypatch.setattr(fromdisk.proc, "which", lambda p: None)
    img = tmp_path / "disk.img"
    img.write_bytes(head + bytes(8192) + tail)
    if refused:
        with pytest.raises(Fatal, match="no raw image, and qemu-img is not installed.*install qemu-utils"):
            fromdisk.inspect(str(img))
    else:
        assert fromdisk.inspect(str(img)) == {"format": "raw", "virtual-size": len(head) + 8192 + len(tail)}
    assert list(fp.calls) == []
