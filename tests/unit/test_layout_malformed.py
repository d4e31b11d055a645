"""A malformed disk layout (autoinstallscript.conf, disks-layout.xml, the server's copy) is
one Fatal naming the file and the line, with the fix; never a traceback. A deploy that does
not use the layout (--layout default) is not stopped by it."""

from __future__ import annotations

import os
import re

import pytest

from si_xen import config, planner
from si_xen.errors import Fatal
from si_xen.image import open_at, open_image
from si_xen.image.metadata import parse_layout
from si_xen.image.survey import survey
from si_xen.request import Request

from . import fakeimage

GOOD = """<!--
  autoinstallscript.conf
-->
<config>
  <disk dev="/dev/sda" label_type="msdos" unit_of_measurement="MB">
    <part  num="1"  size="101"  p_type="primary"  p_name="-"  flags="boot" />
    <part  num="2"  size="2048"  p_type="primary"  p_name="-"  flags="-" />
    <part  num="3"  size="*"  p_type="primary"  p_name="-"  flags="lvm" lvm_group="vg0" />
  </disk>
  <lvm version="2">
    <lvm_group name="vg0" max_log_vols="0" max_phys_vols="0" phys_extent_size="32768K">
      <lv name="root" size="8388608K" />
    </lvm_group>
  </lvm>
  <fsinfo  line="5" comment="# /etc/fstab: static file system information." />
  <fsinfo  line="10" real_dev="/dev/vg0/root" mp="/"  fs="ext4" options="errors=remount-ro" dump="1" pass="1" />
  <fsinfo  line="20" real_dev="/dev/sda1" mp="/boot"  fs="ext4" options="defaults" dump="1" pass="2" />
  <fsinfo  line="30" real_dev="proc" mp="/proc"  fs="proc" options="defaults" dump="0" pass="0"  format="no" />
  <fsinfo  line="40" real_dev="/dev/sda2" mp="swap"  fs="swap" options="defaults" dump="0" pass="0" />
  <boel devstyle="udev"/>
</config>
"""
LINE = {"disk": 5, "part1": 6, "part2": 7, "lv": 12, "comment": 15, "root": 16, "boot": 17}

# name: (what replaces what in GOOD, the file line named, what the message says)
CASES = {
    "line-not-a-number": ('line="20"', 'line="x"', "boot", '<fsinfo> line="x" is not a whole number'),
    "line-missing": ('line="20" ', "", "boot", '<fsinfo> has no line="..."'),
    "line-negative": ('line="20"', 'line="-20"', "boot", '<fsinfo> line="-20" is not a whole number'),
    "line-twice": ('line="20"', 'line="10"', "boot", '<fsinfo> line="10" is used twice (file lines 16 and 17)'),
    "mp-missing": ('mp="/boot"', "", "boot", '<fsinfo> has no mp="..."'),
    "fs-missing": ('fs="ext4" options="defaults"', 'options="defaults"', "boot", '<fsinfo> has no fs="..."'),
    "mp-escapes": ('mp="/boot"', 'mp="/../../etc"', "boot", 'mp="/../../etc" is not a mount point'),
    "mp-with-space": ('mp="/boot"', 'mp="/bo ot"', "boot", 'mp="/bo ot" is not a mount point'),
    "mp-twice": ('mp="/boot"', 'mp="/"', "boot", '<fsinfo> mp="/" is mounted twice (file lines 16 and 17)'),
    "options-newline": ('options="defaults" dump="1"', 'options="defaults&#10;/dev/sdz / ext4" dump="1"', "boot",
                        "has spaces or control characters"),
    "unknown-unit": ('unit_of_measurement="MB"', 'unit_of_measurement="furlongs"', "disk",
                     'unknown unit_of_measurement="furlongs"'),
    "disk-without-dev": ('dev="/dev/sda" ', "", "disk", '<disk> has no dev="..."'),
    "size-not-a-number": ('size="101"', 'size="big"', "part1", '<part> size="big" is not a size (a number of MB, or *)'),
    "size-negative": ('size="101"', 'size="-101"', "part1", '<part> size="-101" is not a size'),
    "size-nan": ('size="101"', 'size="nan"', "part1", '<part> size="nan" is not a size'),
    "size-huge": ('size="2048"', 'size="99999999999999999999"', "part2", "is larger than any disk"),
    "size-missing": ('size="101"  ', "", "part1", '<part> has no size="..."'),
    "percent-over-100": ('unit_of_measurement="MB"', 'unit_of_measurement="%"', "part1", 'size="101" is more than 100%'),
    "num-not-a-number": ('num="2"', 'num="two"', "part2", '<part> num="two" is not a partition number'),
    "lv-unknown-unit": ('size="8388608K"', 'size="8388608Q"', "lv", "unknown unit Q"),
    "lv-negative": ('size="8388608K"', 'size="-8K"', "lv", '<lv> size="-8K" is not a size'),
    "lv-without-name": ('<lv name="root" ', "<lv ", "lv", '<lv> has no name="..."'),
    "unterminated-quote": ('mp="/boot"', 'mp="/boot', "boot", "not XML: not well-formed"),
    "not-xml": (GOOD, "this is a shell script, not a layout\n", 1, "not XML: syntax error"),
    "binary-garbage": (GOOD, "\x7fELF\udcff\udcfe\x00\x01garbage", 1, "not XML"),
    "empty": (GOOD, "", 1, "not XML: no element found"),
    "another-root": (GOOD, "<html><body/></html>", 1, "<html> where a SystemImager layout has <config>"),
    "entity-expansion": (GOOD, '<!DOCTYPE config [<!ENTITY a "aaaaaaaaaa">]>\n<config/>', 1,
                         "not XML: a DTD or entity declaration"),
    "unclosed": ("</config>", "", 22, "not XML: no element found"),
}


def malformed(name: str) -> str:
    old, new, _, _ = CASES[name]
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_malformed_layout_is_one_fatal_naming_file_and_line(name):
    _, _, where, says = CASES[name]
    line = LINE.get(where, where)
    fs = parse_layout(GOOD, "autoinstallscript.conf")  # what each case breaks is a good layout
    assert [(e.mountpoint, e.fs, e.options, e.size_mib) for e in fs] == [
        ("/", "ext4", "errors=remount-ro", 8192), ("/boot", "ext4", "defaults", 101), ("swap", "swap", "defaults", 2048)]
    with pytest.raises(Fatal) as e:
        parse_layout(malformed(name), "autoinstallscript.conf")
    assert e.value.problem.startswith(f"/etc/systemimager/autoinstallscript.conf line {line}: "), e.value.problem
    assert says in e.value.problem
    assert e.value.fix == "correct it in the image (or on the golden client, then si_getimage again), or use --layout default"


def test_the_servers_copy_is_named_as_the_servers(tmp_path):
    root = fakeimage.make(tmp_path / "img")
    image = open_at("img", root, lambda: malformed("line-not-a-number"))
    with pytest.raises(Fatal, match=re.escape("scripts/disks-layouts/img.xml line 17: <fsinfo> line=")) as e:
        _ = image.meta.filesystems
    assert e.value.fix == "correct it on the SystemImager server, or use --layout default"


def test_a_huge_attribute_is_cut_in_the_message():
    with pytest.raises(Fatal) as e:
        parse_layout(GOOD.replace('line="20"', f'line="{"9" * 100_000}"'), "disks-layout.xml")
    assert len(str(e.value)) < 400 and "/etc/systemimager/disks-layout.xml line 17" in str(e.value)


@pytest.fixture
def broken(tmp_path):
    root = fakeimage.make(tmp_path / "img")
    with open(os.path.join(root, "etc/systemimager/autoinstallscript.conf"), "w") as f:
        f.write(malformed("line-not-a-number"))
    return root


def plan(root, tmp_path, layout):
    image = open_image(root)
    o = dict(config.BUILTIN, hostname="vm1", dhcp=True, dir=str(tmp_path), output=str(tmp_path), layout=layout)
    return planner.make_plan(Request.from_options(o), image, survey(root))


def test_layout_image_with_a_bad_fsinfo_line_is_one_fatal(broken, tmp_path):
    with pytest.raises(Fatal, match=r"^/etc/systemimager/autoinstallscript.conf line 17: <fsinfo> line=\"x\" is not"):
        plan(broken, tmp_path, "image")


def test_layout_default_does_not_read_the_broken_layout(tmp_path):
    root = fakeimage.make(tmp_path / "img")
    with open(os.path.join(root, "etc/systemimager/autoinstallscript.conf"), "w") as f:
        f.write(malformed("not-xml"))
    assert sorted(d.mountpoint for d in plan(root, tmp_path, "default").disks) == ["", "/"]


def test_retrieval_files_are_read_as_printable_text(tmp_path):
    root = fakeimage.make(tmp_path / "img")
    with open(os.path.join(root, "etc/systemimager/IMAGE_RETRIEVAL_TIME"), "wb") as f:
        f.write(b"\xff\xfe\x1b[31m2026.12.04\x00 " + b"9" * 1000 + b"\n")
    meta = open_image(root).meta
    assert meta.retrieval_time.startswith("???[31m2026.12.04? 999") and len(meta.retrieval_time) == 200
