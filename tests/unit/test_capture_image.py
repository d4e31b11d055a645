"""The SystemImager side of a capture (si_xen/capture/image.py): the layout written for a VM parses
back (image/metadata.py, what si_mkxenvm --layout image reads) to the VM's filesystems; the stub,
the retrieval files, the exclusions; publication whole, and what a killed capture left."""

from __future__ import annotations

import os
import re

import pytest

from si_xen.capture import image
from si_xen.errors import Fatal
from si_xen.image.metadata import parse_layout
from si_xen.image.store import StoreConfig
from si_xen.record import DiskRecord

DISKS = (DiskRecord("xvda1", "", "swap", "128M", "/vms/swap.img"),
         DiskRecord("xvda2", "/", "ext4", "4G", "/vms/disk.img", "errors=remount-ro"),
         DiskRecord("xvda3", "/var", "xfs", "512M", "/vms/var.img", "defaults"))
FSTAB = """# /etc/fstab: written by si-xen
UUID=1234-abcd / ext4 errors=remount-ro,noatime 0 1
/dev/xvda3 /var xfs defaults 0 2
/dev/xvda1 none swap sw 0 0
proc /proc proc defaults 0 0
nfs:/home /home nfs ro,soft 0 0
"""


@pytest.mark.parametrize("keep_xen,header", [(False, False), (True, True)])
def test_the_layout_parses_back_to_the_vms_filesystems(keep_xen, header):
    text = image.layout_xml(DISKS, FSTAB, "web01", keep_xen, header=header)
    dev = "/dev/xvda" if keep_xen else "/dev/sda"
    got = parse_layout(text, "disks-layout.xml")
    assert got == (
        parse_layout(text, "x")[0].__class__("swap", "swap", "sw", f"{dev}1", 128),
        got[0].__class__("/", "ext4", "errors=remount-ro,noatime", f"{dev}2", 4096),
        got[0].__class__("/var", "xfs", "defaults", f"{dev}3", 512),
    ), "network and pseudo filesystems are kept with format=no, not as disks"
    assert 'mount_dev="UUID=1234-abcd"' in text and 'mp="/home" fs="nfs"' in text and 'format="no"' in text
    assert text.startswith("<!--") == header and ('<boel devstyle="udev"/>' in text) == header


def test_disks_layout_xml_names_the_bootloader_efi_with_an_esp():
    text = image.layout_xml(DISKS, FSTAB, "web01", False)
    assert '<bootloader flavor="grub2" install_type="legacy" default_entry="0" timeout="2">' in text
    assert '<target dev="/dev/sda" />' in text and "<bootloader" not in image.layout_xml(DISKS, FSTAB, "web01", False, header=True)
    esp = DiskRecord("xvda4", "/boot/efi", "vfat", "256M", "")
    text = image.layout_xml([*DISKS, esp], FSTAB, "web01", False, label="gpt")
    assert 'install_type="efi"' in text and 'label_type="gpt"' in text and 'mp="/boot/efi" fs="vfat"' in text


def test_a_vm_without_fstab_entries_takes_its_records_options():
    text = image.layout_xml(DISKS[1:2], "", "web01", False)
    (e,) = parse_layout(text, "disks-layout.xml")
    assert (e.mountpoint, e.options, e.real_dev, e.size_mib) == ("/", "errors=remount-ro", "/dev/sda2", 4096)


def test_odd_characters_in_the_fstab_are_quoted():
    text = image.layout_xml(DISKS[1:2], 'LABEL=a"<b / ext4 defaults 0 1\n', "web01", False)
    assert 'mount_dev="LABEL=a&quot;&lt;b"' in text and parse_layout(text, "disks-layout.xml")[0].mountpoint == "/"


def test_stub_is_systemimagers_exact_format(tmp_path):
    cfg = StoreConfig(str(tmp_path / "images"), str(tmp_path / "stubs"), "test")
    stub = image.write_stub(cfg, "web", "/srv/images/web")
    with open(stub) as f:
        assert f.read() == "[web]\n\tpath=/srv/images/web\n\n"
    assert os.path.basename(stub) == "40web"


def test_retrieval_files_and_a_guest_link_never_followed_out(tmp_path):
    tree, outside = tmp_path / "tree", tmp_path / "outside"
    (tree / "etc").mkdir(parents=True)
    outside.mkdir()
    os.symlink(str(outside), tree / "etc" / "systemimager")  # absolute: resolved inside the tree
    written = image.write_metadata(str(tree), "web01", {"disks-layout.xml": "<config/>\n"})
    assert os.listdir(outside) == []
    meta = tree / outside.relative_to("/")
    assert (meta / "IMAGE_RETRIEVED_FROM").read_text() == "web01\n"
    assert re.fullmatch(r"\d{4}\.\d\d\.\d\d \d\d:\d\d\n", (meta / "IMAGE_RETRIEVAL_TIME").read_text())
    assert "/etc/systemimager/disks-layout.xml" in written


def test_layout_files_follow_the_sites_format(tmp_path):
    assert image.layout_files(str(tmp_path)) == ("autoinstallscript.conf", "disks-layout.xml")
    (tmp_path / "etc/systemimager").mkdir(parents=True)
    (tmp_path / "etc/systemimager/disks-layout.xml").write_text("<config/>")
    assert image.layout_files(str(tmp_path)) == ("disks-layout.xml",)


def test_getimage_exclude_the_servers_else_the_shipped_one(tmp_path):
    cfg = StoreConfig("/i", "/s", str(tmp_path / "systemimager.conf"))
    pats, used = image.getimage_excludes(cfg)
    assert "/etc/ssh/ssh_host_*" in pats and "+ /var/lib/nfs/statd/sm" in pats and "default" in used
    (tmp_path / "getimage.exclude").write_text("# ours\n/srv/cache/*\n\n")
    assert image.getimage_excludes(cfg) == (["/srv/cache/*"], str(tmp_path / "getimage.exclude"))


def test_publish_whole_and_never_over_an_image_without_replace(tmp_path):
    target = str(tmp_path / "web")
    stage = image.staging(target)
    open(os.path.join(stage, "one"), "w").close()
    image.publish(stage, target, replace=False)
    assert os.listdir(target) == ["one"]
    stage = image.staging(target)
    with pytest.raises(Fatal, match="exists"):
        image.publish(stage, target, replace=False)
    open(os.path.join(stage, "two"), "w").close()
    image.publish(stage, target, replace=True)
    assert os.listdir(target) == ["two"] and sorted(os.listdir(tmp_path)) == ["web"]


def test_what_a_killed_capture_left_is_cleared(tmp_path):
    target = str(tmp_path / "web")
    dead = 2**22 + 7  # above pid_max's default: no such process
    os.makedirs(f"{tmp_path}/.web.si-xen-new-{dead}/etc")
    os.makedirs(f"{tmp_path}/.web.si-xen-old-{dead}/etc")  # killed between the two renames: put back
    said = []
    image.clear_stale(target, said.append)
    assert sorted(os.listdir(tmp_path)) == ["web"] and os.path.isdir(f"{target}/etc") and len(said) == 2
    os.makedirs(f"{tmp_path}/.web.si-xen-old-{dead}")
    os.makedirs(f"{tmp_path}/.web.si-xen-new-{os.getpid()}")  # a live capture's: kept
    image.clear_stale(target, said.append)
    assert sorted(os.listdir(tmp_path)) == [f".web.si-xen-new-{os.getpid()}", "web"]


def test_layout_partitions_as_the_label_wants_them():
    """msdos: / flagged boot, partitions 5+ logical inside an extended one; gpt: only the EFI
    system partition flagged (parted's boot flag on gpt marks the ESP)."""
    disks = [DiskRecord("xvda1", "/", "ext4", "8G", ""), DiskRecord("xvda5", "", "swap", "1G", "")]
    text = image.layout_xml(disks, "", "web01", False)
    parts = re.findall(r'<part num="(\d+)" size="([^"]+)" p_type="(\w+)" p_name="-" flags="([^"]+)"', text)
    assert parts == [("1", "8192", "primary", "boot"), ("2", "*", "extended", "-"), ("5", "1024", "logical", "-")]
    esp = DiskRecord("xvda1", "/boot/efi", "vfat", "256M", "")
    text = image.layout_xml([esp, DiskRecord("xvda2", "/", "ext4", "8G", "")], "", "web01", False, label="gpt")
    parts = re.findall(r'<part num="(\d+)" size="[^"]+" p_type="(\w+)" p_name="-" flags="([^"]+)"', text)
    assert parts == [("1", "primary", "boot"), ("2", "primary", "-")]


# SystemImager 5's disks-layout.xsd (master): the only flags its installer accepts (it validates the file first)
XSD_FLAGS = {"root", "boot", "hidden", "raid", "lvm", "lba", "swap", "legacy_boot", "esp", "-"}
PART = re.compile(r'<part num="(\d+)" size="([^"]+)" p_type="(\w+)" p_name="-" flags="([^"]+)"')


def test_a_gpt_disk_booted_legacy_gets_a_bios_boot_partition():
    """grub-pc on gpt needs a BIOS boot partition (ef02): 1 MiB, first where number 1 is free, no
    other partition renumbered; autoinstallscript.conf says bios_grub (4.x runs parted's set N bios_grub on),
    disks-layout.xml cannot (5.x's xsd), so it is made untyped there and the summary says how to type it."""
    disks = [DiskRecord("xvda2", "/", "ext4", "8G", ""), DiskRecord("xvda3", "", "swap", "1G", "")]
    fstab = "/dev/sda2 / ext4 defaults 0 1\n/dev/sda3 none swap sw 0 0\n"
    v5 = image.layout_xml(disks, fstab, "web01", False, label="gpt")
    v4 = image.layout_xml(disks, fstab, "web01", False, header=True, label="gpt")
    assert PART.findall(v4) == [("1", "1", "primary", "bios_grub"), ("2", "8192", "primary", "-"),
                                ("3", "1024", "primary", "-")]
    assert PART.findall(v5) == [("1", "1", "primary", "-"), ("2", "8192", "primary", "-"), ("3", "1024", "primary", "-")]
    assert {f for *_, f in PART.findall(v5)} <= XSD_FLAGS and 'install_type="legacy"' in v5
    assert "sgdisk -t 1:ef02" in v5 and not re.search(r'real_dev="/dev/sda1"', v5 + v4), "no filesystem on it"
    (note,) = image.layout_notes({"disks-layout.xml": v5, "autoinstallscript.conf": v4})
    assert note.startswith("WARNING: disks-layout.xml: BIOS boot partition") and "sgdisk -t 1:ef02" in note
    for text in (v4, v5):  # what si_mkxenvm --layout image reads of it: the same filesystems
        assert [(e.mountpoint, e.real_dev) for e in parse_layout(text, "disks-layout.xml")] == \
            [("/", "/dev/sda2"), ("swap", "/dev/sda3")]
    # partitions 1..3 taken: the next free number, at the end; nothing renumbered
    full = [DiskRecord(f"xvda{n}", mp, fs, "1G", "") for n, mp, fs in ((1, "/", "ext4"), (2, "/var", "ext4"),
                                                                      (3, "", "swap"))]
    assert [p[0] for p in PART.findall(image.layout_xml(full, "", "w", False, header=True, label="gpt"))
            if p[3] == "bios_grub"] == ["4"]


@pytest.mark.parametrize("disks,label", [
    ([DiskRecord("xvda1", "/boot/efi", "vfat", "256M", ""), DiskRecord("xvda2", "/", "ext4", "8G", "")], "gpt"),
    ([DiskRecord("xvda1", "/", "ext4", "8G", "")], "msdos"),
    ([DiskRecord("xvda1", "", "bios_grub", "2M", ""), DiskRecord("xvda2", "/", "ext4", "8G", "")], "gpt")])
def test_no_bios_boot_partition_added_where_none_is_wanted_or_one_is_there(disks, label):
    """EFI boots from its ESP; msdos has the gap after the MBR; a source disk's own is kept as it was."""
    for header in (True, False):
        text = image.layout_xml(disks, "", "web01", False, header=header, label=label)
        parts = PART.findall(text)
        assert [p[0] for p in parts] == [d.vdev[4:] for d in disks]
        own = [p for p in parts if p[0] == "1" and disks[0].fs == "bios_grub"]
        assert own == ([("1", "2", "primary", "bios_grub" if header else "-")] if own else [])
        assert bool(image.layout_notes({"disks-layout.xml": text})) == (bool(own) and not header)  # untyped there
