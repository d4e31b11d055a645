import pytest

from si_xen.errors import Fatal
from si_xen.image.metadata import parse_layout, read_metadata

AUTOINSTALL = """<!-- autoinstallscript.conf -->
<config>
  <disk dev="/dev/sda" label_type="msdos" unit_of_measurement="MB">
    <part  num="1"  size="101"  p_type="primary"  p_name="-"  flags="boot" />
    <part  num="2"  size="2048"  p_type="primary"  p_name="-"  flags="-" />
    <part  num="3"  size="*"  p_type="primary"  p_name="-"  flags="lvm" lvm_group="VolGroup00" />
  </disk>
  <lvm version="2">
    <lvm_group name="VolGroup00" max_log_vols="0" max_phys_vols="0" phys_extent_size="32768K">
      <lv name="LogVol00" size="8388608K" />
      <lv name="LogVol01" size="*" />
    </lvm_group>
  </lvm>
  <fsinfo  line="10" real_dev="/dev/VolGroup00/LogVol00" mp="/"  fs="ext3" options="defaults" dump="1" pass="1" />
  <fsinfo  line="20" real_dev="/dev/sda1" mount_dev="LABEL=/boot" mp="/boot"  fs="ext3" options="defaults" dump="1" pass="2" />
  <fsinfo  line="30" real_dev="tmpfs" mp="/dev/shm"  fs="tmpfs" options="defaults" dump="0" pass="0"  format="no" />
  <fsinfo  line="60" real_dev="proc" mp="/proc"  fs="proc" options="defaults" dump="0" pass="0"  format="no" />
  <fsinfo  line="70" real_dev="/dev/sda2" mp="swap"  fs="swap" options="defaults" dump="0" pass="0" />
  <boel devstyle="udev"/>
</config>"""

DISKS_LAYOUT = """<config>
  <disk dev="/dev/sda" label_type="msdos" unit_of_measurement="MB">
    <part num="1" size="500" p_type="primary" flags="boot" />
    <part num="5" size="512" p_type="logical" flags="swap" />
    <part num="6" size="*" p_type="logical" />
  </disk>
  <bootloader flavor="grub2" install_type="legacy" default_entry="0" timeout="2"><target dev="/dev/sda" /></bootloader>
  <fsinfo line="100" real_dev="/dev/sda6" mp="/" fs="xfs" options="defaults" dump="1" pass="2" />
  <fsinfo line="101" real_dev="/dev/sda5" mp="swap" fs="swap" options="defaults" dump="0" pass="0" />
  <fsinfo line="102" real_dev="/dev/sda1" mp="/boot" fs="ext4" options="defaults" dump="1" pass="2" />
</config>"""


def test_autoinstallscript_filesystems_and_sizes():
    fs = parse_layout(AUTOINSTALL, "autoinstallscript.conf")
    assert [(e.mountpoint, e.fs, e.size_mib) for e in fs] == [("/", "ext3", 8192), ("/boot", "ext3", 101),
                                                              ("swap", "swap", 2048)]


def test_disks_layout_xml():
    fs = parse_layout(DISKS_LAYOUT, "disks-layout.xml")
    assert [(e.mountpoint, e.fs, e.size_mib) for e in fs] == [("/", "xfs", None), ("swap", "swap", 512),
                                                              ("/boot", "ext4", 500)]


def test_broken_xml_is_fatal():
    with pytest.raises(Fatal, match="autoinstallscript.conf"):
        parse_layout("<config><fsinfo", "autoinstallscript.conf")


def test_read_metadata(tmp_path):
    meta = tmp_path / "etc" / "systemimager"
    meta.mkdir(parents=True)
    (meta / "IMAGE_RETRIEVAL_TIME").write_text("2010.03.14 15:09\n")
    (meta / "IMAGE_RETRIEVED_FROM").write_text("gc01\n")
    (meta / "autoinstallscript.conf").write_text(AUTOINSTALL)
    m = read_metadata(str(tmp_path))
    assert (m.retrieval_time, m.retrieved_from, m.layout_file) == ("2010.03.14 15:09", "gc01", "autoinstallscript.conf")
    assert len(m.filesystems) == 3
    assert read_metadata(str(tmp_path / "nothing")).filesystems == ()
