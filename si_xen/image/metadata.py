"""What SystemImager recorded about an image under etc/systemimager/ (all optional)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

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
    layout_file: str | None = None
    filesystems: tuple[FsEntry, ...] = field(default_factory=tuple)


def _part_sizes(root: ET.Element) -> dict[str, int]:
    """Device -> size in MiB for partitions and LVs whose size is written down."""
    sizes: dict[str, int] = {}
    for disk in root.iter("disk"):
        dev = disk.get("dev", "")
        unit = (disk.get("unit_of_measurement") or "MB").upper()
        for part in disk.iter("part"):
            size, num = part.get("size", "*"), part.get("num", "")
            if size.replace(".", "", 1).isdigit() and unit in ("MB", "MIB"):
                sep = "p" if dev[-1:].isdigit() else ""
                sizes[f"{dev}{sep}{num}"] = int(float(size))
    for group in root.iter("lvm_group"):
        for lv in group.iter("lv"):
            size = lv.get("size", "*")
            if size.endswith("K") and size[:-1].isdigit():
                sizes[f"/dev/{group.get('name')}/{lv.get('name')}"] = int(size[:-1]) // 1024
    return sizes


def parse_layout(text: str, name: str) -> tuple[FsEntry, ...]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise Fatal(f"cannot parse the image's {name}: {e}", "fix the file or use --layout default") from None
    sizes = _part_sizes(root)
    entries = []
    for fsi in sorted(root.iter("fsinfo"), key=lambda e: int(e.get("line", "0") or 0)):
        fs, mp = fsi.get("fs", ""), fsi.get("mp", "")
        if fs not in DISK_FS or fsi.get("format") == "no" or not mp:
            continue
        dev = fsi.get("real_dev", "")
        mp = "swap" if fs == "swap" else mp
        entries.append(FsEntry(mp, fs, fsi.get("options") or "defaults", dev, sizes.get(dev)))
    return tuple(entries)


def read_metadata(root: str) -> Metadata:
    g = Guest(root)

    def line(name: str) -> str | None:
        text = g.read_text(f"{META_DIR}/{name}")
        return text.strip().splitlines()[0].strip() if text and text.strip() else None

    for name in LAYOUT_FILES:
        text = g.read_text(f"{META_DIR}/{name}")
        if text is not None:
            return Metadata(line("IMAGE_RETRIEVAL_TIME"), line("IMAGE_RETRIEVED_FROM"), name, parse_layout(text, name))
    return Metadata(line("IMAGE_RETRIEVAL_TIME"), line("IMAGE_RETRIEVED_FROM"))
