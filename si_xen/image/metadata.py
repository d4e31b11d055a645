"""What SystemImager recorded about an image under etc/systemimager/ (all optional)."""

from __future__ import annotations

import posixpath
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.parsers import expat

from ..errors import Fatal
from ..guestfs import Guest

META_DIR = "/etc/systemimager"
LAYOUT_FILES = ("autoinstallscript.conf", "disks-layout.xml")
# Filesystems a VM disk can be made of; pseudo and network filesystems are not disks.
DISK_FS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "reiserfs", "jfs", "vfat", "msdos", "swap"}


@dataclass(frozen=True)
class FsEntry:
    """One filesystem of the golden client (an <fsinfo> line)."""

    mountpoint: str  # "swap" for swap
    fs: str
    options: str
    real_dev: str
    size_mib: int | None = None  # from the partition/LV table when it says


@dataclass(frozen=True)
class Metadata:
    retrieval_time: str | None = None
    retrieved_from: str | None = None
    layout_file: str | None = None  # autoinstallscript.conf, disks-layout.xml, or where the server's copy is
    layout_text: str | None = None

    @property
    def filesystems(self) -> tuple[FsEntry, ...]:
        """Parsed when a deploy uses the layout (--layout image): a broken file is its FATAL
        then, and never stops a deploy or listing that does not read it."""
        return parse_layout(self.layout_text, self.layout_file) if self.layout_text is not None else ()


LINE = "{si-xen}line"  # not an XML name: no file can carry this attribute itself
# unit_of_measurement -> MiB per unit; "%" sizes are relative: the VM's disk gets its need
UNITS = {"MB": 1, "MIB": 1, "GB": 1024, "GIB": 1024, "TB": 2**20, "TIB": 2**20, "KB": 1 / 1024, "KIB": 1 / 1024,
         "S": 1 / 2048, "%": None}  # fmt: skip
LV_UNITS = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 2**20}
MAX_MIB = 2**40  # 1 EiB: no filesystem here is larger; a size beyond it is not a size
_NUMBER = re.compile(r"\d{1,20}(\.\d{1,6})?")


class _Layout:
    """One layout file's text as a tree whose elements know their line; ``bad`` is its FATAL."""

    def __init__(self, text: str, name: str):
        self.shown = name if "/" in name else f"{META_DIR}/{name}"  # a server's copy: as open_at names it
        self.fix = ("correct it on the SystemImager server" if "/" in name else
                    "correct it in the image (or on the golden client, then si_getimage again)") + ", or use --layout default"
        builder, p = ET.TreeBuilder(), expat.ParserCreate()

        def start(tag, attrs):
            builder.start(tag, {**attrs, LINE: str(p.CurrentLineNumber)})

        def no_dtd(*_):
            raise expat.ExpatError("a DTD or entity declaration (a SystemImager layout has none)")

        p.StartElementHandler, p.EndElementHandler = start, builder.end
        p.StartDoctypeDeclHandler = p.EntityDeclHandler = no_dtd
        try:
            p.Parse(text.encode("utf-8", "surrogateescape"), True)
        except expat.ExpatError as e:
            reason = expat.ErrorString(e.code) if getattr(e, "code", None) else str(e)
            raise Fatal(f"{self.shown} line {p.CurrentLineNumber}: not XML: {reason}", self.fix) from None
        self.root = builder.close()
        if self.root.tag != "config":
            self.bad(self.root, f"<{self.root.tag}> where a SystemImager layout has <config>")

    def bad(self, el: ET.Element, what: str):
        raise Fatal(f"{self.shown} line {el.get(LINE)}: {what}", self.fix)

    def need(self, el: ET.Element, attr: str) -> str:
        value = el.get(attr)
        if not value:
            self.bad(el, f'<{el.tag}> has no {attr}="..."')
        return value

    def mib(self, el: ET.Element, number: str, factor: float, unit: str) -> int:
        if not _NUMBER.fullmatch(number):
            self.bad(el, f'<{el.tag}> size="{_cut(el.get("size"))}" is not a size (a number of {unit}, or *)')
        value = float(number) * factor
        if value > MAX_MIB:
            self.bad(el, f'<{el.tag}> size="{_cut(el.get("size"))}" is larger than any disk')
        return int(value)


def _cut(value: str) -> str:
    """An attribute's value as a message shows it: a hostile file's may be huge."""
    return value if len(value) <= 60 else value[:57] + "..."


def _part_sizes(doc: _Layout) -> dict[str, int]:
    """Device -> size in MiB for partitions and LVs whose size is written down."""
    sizes: dict[str, int] = {}
    for disk in doc.root.iter("disk"):
        dev = doc.need(disk, "dev")
        unit = disk.get("unit_of_measurement") or "MB"
        if unit.upper() not in UNITS:
            doc.bad(disk, f'unknown unit_of_measurement="{_cut(unit)}" (SystemImager writes MB, MiB or %)')
        factor = UNITS[unit.upper()]
        for part in disk.iter("part"):
            num, size = doc.need(part, "num"), doc.need(part, "size")
            if not num.isdigit() or not 0 < int(num) < 1000:
                doc.bad(part, f'<part> num="{_cut(num)}" is not a partition number')
            if size != "*":
                mib = doc.mib(part, size, factor or 1, unit)
                if factor is None and mib > 100:
                    doc.bad(part, f'<part> size="{_cut(size)}" is more than 100%')
                if factor is not None:
                    sizes[f"{dev}{'p' if dev[-1:].isdigit() else ''}{int(num)}"] = mib
    for group in doc.root.iter("lvm_group"):
        vg = doc.need(group, "name")
        for lv in group.iter("lv"):
            name, size = doc.need(lv, "name"), doc.need(lv, "size")
            if size != "*":
                unit = size[-1:].upper() if size[-1:].isalpha() else "M"
                if unit not in LV_UNITS:
                    doc.bad(lv, f'<lv> size="{_cut(size)}": unknown unit {size[-1]} (SystemImager writes K)')
                sizes[f"/dev/{vg}/{name}"] = doc.mib(lv, size[:-1] if size[-1:].isalpha() else size, LV_UNITS[unit], unit)
    return sizes


def _mountpoint(doc: _Layout, fsi: ET.Element, mp: str) -> str:
    """An absolute mount point: no .., no spaces or control characters (it becomes a path on
    the dom0 and a line of the VM's fstab)."""
    if mp.startswith("/") and (any(c.isspace() or ord(c) < 32 for c in mp) or ".." in mp.split("/")
                               or len(mp) > 1024):
        doc.bad(fsi, f'<fsinfo> mp="{_cut(mp)}" is not a mount point (an absolute path without spaces or ..)')
    return posixpath.normpath(mp) if mp.startswith("/") else mp


def parse_layout(text: str, name: str) -> tuple[FsEntry, ...]:
    """The golden client's disk filesystems from a layout file, in its fsinfo line order;
    ``name``: the file's name in etc/systemimager, or a path (the server's copy) as shown."""
    doc = _Layout(text, name)
    sizes = _part_sizes(doc)
    numbered, mounted = {}, {}
    for fsi in doc.root.iter("fsinfo"):
        line = doc.need(fsi, "line")
        if not line.isdigit() or len(line) > 9:
            doc.bad(fsi, f'<fsinfo> line="{_cut(line)}" is not a whole number')
        if int(line) in numbered:
            doc.bad(fsi, f'<fsinfo> line="{_cut(line)}" is used twice (file lines {numbered[int(line)].get(LINE)} and {fsi.get(LINE)})')
        numbered[int(line)] = fsi
    entries = []
    for _, fsi in sorted(numbered.items()):
        fs, mp = fsi.get("fs", ""), fsi.get("mp", "")
        if not fs and not mp:
            continue  # an fstab comment kept by si_getimage
        fs, mp = doc.need(fsi, "fs"), doc.need(fsi, "mp")
        if fs not in DISK_FS or fsi.get("format") == "no":
            continue
        options = fsi.get("options") or "defaults"
        if any(c.isspace() or ord(c) < 32 for c in options):
            doc.bad(fsi, f'<fsinfo> options="{_cut(options)}" has spaces or control characters (an fstab field has none)')
        mp = "swap" if fs == "swap" else _mountpoint(doc, fsi, mp)
        if mp != "swap" and mp in mounted:
            doc.bad(fsi, f'<fsinfo> mp="{_cut(mp)}" is mounted twice (file lines {mounted[mp]} and {fsi.get(LINE)})')
        mounted[mp] = fsi.get(LINE)
        dev = fsi.get("real_dev", "")
        entries.append(FsEntry(mp, fs, options, dev, sizes.get(dev)))
    return tuple(entries)


def read_metadata(root: str) -> Metadata:
    g = Guest(root)

    def line(name: str) -> str | None:
        """The file's first line, printable (it is shown on terminals: no escape sequences)."""
        text = g.read_text(f"{META_DIR}/{name}")
        first = text.strip().splitlines()[0].strip() if text and text.strip() else None
        return "".join(c if c.isprintable() else "?" for c in first[:200]) if first else None

    for name in LAYOUT_FILES:
        text = g.read_text(f"{META_DIR}/{name}")
        if text is not None:
            return Metadata(line("IMAGE_RETRIEVAL_TIME"), line("IMAGE_RETRIEVED_FROM"), name, text)
    return Metadata(line("IMAGE_RETRIEVAL_TIME"), line("IMAGE_RETRIEVED_FROM"))
