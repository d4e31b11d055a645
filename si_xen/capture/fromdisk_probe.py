"""The guest side of fromdisk.py: which of a foreign disk's filesystems is the guest's root, where
its fstab puts the others, and what another hypervisor left in it (notes for the capture's summary).

Runs as ``unshare --mount --propagation private python3 -m si_xen.capture.fromdisk_probe SPEC``:
its mounts (read-only, nosuid, nodev, noexec) live in a namespace of their own, so even a SIGKILL
leaves none. The guest is untrusted: its paths are resolved confined (guestfs.Guest), its
initramfs is read as data (initramfs.scan), none of its programs is run.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import asdict, dataclass

from .. import proc
from ..storage.mount import RO_OPTS


@dataclass(frozen=True)
class Fs:
    """A filesystem as ``blkid -p`` probed it: ``number`` is its partition's (0: the whole disk)."""

    dev: str
    type: str
    number: int = 0
    uuid: str = ""
    label: str = ""
    partuuid: str = ""
    partlabel: str = ""
    size: int = 0  # bytes
    ptype: str = ""  # the partition's type as partx reads it: a GPT type GUID, an msdos id (0x83)
    lv: str = ""  # VG/LV: a logical volume of the disk's LVM (fromdisk_lvm.py), mapped by device-mapper

    def named(self) -> str:
        where = f"logical volume {self.lv}" if self.lv else f"partition {self.number}" if self.number else "the whole disk"
        return f"{where} ({self.type or 'no filesystem'}{f' LABEL={self.label}' if self.label else ''})"


# fstab entries that are no local filesystem of this disk: pseudo, memory and network filesystems
NOT_LOCAL = {"proc", "sysfs", "devpts", "devtmpfs", "tmpfs", "ramfs", "cgroup", "cgroup2", "securityfs", "debugfs",
             "efivarfs", "binfmt_misc", "hugetlbfs", "mqueue", "pstore", "configfs", "tracefs", "overlay", "none",
             "nfs", "nfs4", "cifs", "smbfs", "smb3", "sshfs", "glusterfs", "ceph", "9p", "virtiofs", "davfs", "afs"}
# Disk names an fstab may give this disk's partitions: sda2, vda2, xvda2, hda2, nvme0n1p2, mmcblk0p2.
DEVNAME = re.compile(r"/dev/(?:(?:s|v|xv|h)d([a-z]+)(\d*)|(nvme\d+n\d+|mmcblk\d+)(?:p(\d+))?)$")
FIRST_DISKS = {"a", "nvme0n1", "mmcblk0"}
# GPT's "BIOS boot partition" type (sgdisk's ef02, parted's bios_grub), and the layout's word for it (capture/image.py)
BIOS_BOOT_GUID, BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649", "bios_grub"
BY = {"by-uuid": "UUID", "by-label": "LABEL", "by-partuuid": "PARTUUID", "by-partlabel": "PARTLABEL"}


def mapper_name(vg: str, lv: str) -> str:
    """The name LVM gives VG/LV under /dev/mapper: each dash doubled, one dash between."""
    return f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"


def _lv_named(spec: str, fss: list[Fs]) -> Fs | None:
    """The logical volume of /dev/mapper/VG-LV or /dev/VG/LV (None: no LV's name)."""
    parts = spec.split("/")
    for f in (f for f in fss if f.lv):
        vg, lv = f.lv.split("/", 1)
        if spec == f"/dev/mapper/{mapper_name(vg, lv)}" or parts == ["", "dev", vg, lv]:
            return f
    return None


def _unescape(field: str) -> str:
    """fstab's octal escapes (\\040 a space)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_fstab(text: str) -> list[tuple[str, str, str, str]]:
    """(spec, mount point, type, options) of each entry."""
    out = []
    for line in text.splitlines():
        f = line.split()  # as libmount: a comment is a line of its own; fields past the sixth ignored
        if len(f) >= 2 and not f[0].startswith("#"):
            out.append((_unescape(f[0]), _unescape(f[1]), f[2] if len(f) > 2 else "auto",
                        f[3] if len(f) > 3 else "defaults"))
    return out


def _disk_of(spec: str) -> tuple[str, int] | None:
    m = DEVNAME.match(spec)
    if not m:
        return None
    return (m.group(1), int(m.group(2) or 0)) if m.group(1) else (m.group(3), int(m.group(4) or 0))


def find(spec: str, fss: list[Fs], disks: set[str]) -> Fs | None:
    """The filesystem an fstab ``spec`` names: by UUID, label, partition UUID or label, or a
    device name of one of ``disks`` (sda/vda/xvda... 2 is partition 2, sda the whole disk)."""
    parts = spec.split("/")
    if spec.startswith("/dev/disk/") and len(parts) > 4 and parts[3] in BY:  # udev's names: \x20 is a space
        name = re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), "/".join(parts[4:]))
        spec = f"{BY[parts[3]]}={name}"
    key, _, value = spec.partition("=")
    field = {"UUID": "uuid", "LABEL": "label", "PARTUUID": "partuuid", "PARTLABEL": "partlabel"}.get(key)
    if field and value:
        fold = field in ("uuid", "partuuid")  # hex: any case
        return next((f for f in fss if getattr(f, field) and (getattr(f, field).lower() == value.lower() if fold
                                                               else getattr(f, field) == value)), None)
    if spec.startswith("/dev/") and (lv := _lv_named(spec, fss)) is not None:
        return lv
    named = _disk_of(spec)
    if named and named[0] in disks:
        return next((f for f in fss if f.number == named[1]), None)
    return None


def _local(spec: str, mp: str, fstype: str, opts: str) -> str | None:
    """Why an entry is no filesystem of this disk to capture (None: it may be)."""
    o = set(opts.split(","))
    if fstype == "swap" or mp in ("none", "swap"):
        return "swap"
    if fstype in NOT_LOCAL or fstype.startswith("fuse") or "_netdev" in o:
        return f"not local ({fstype})"
    if o & {"bind", "rbind"}:
        return "a bind mount"
    if not mp.startswith("/") or not (spec.startswith("/") or "=" in spec) or spec.startswith("//"):
        return "not a disk"
    if "noauto" in o:
        return "noauto (not mounted at boot)"
    return None


def _disks(entries: list) -> set[str]:
    """The names this disk has in an fstab: the disk of its / when named by device, else the first."""
    rootname = next((_disk_of(s) for s, mp, _t, _o in entries if mp == "/"), None)
    return {rootname[0]} if rootname else FIRST_DISKS


def names_as_root(fstab: str, fss: list[Fs]) -> Fs | None:
    """The filesystem an fstab mounts on /, if it is on this disk."""
    entries = parse_fstab(fstab)
    return next((find(s, fss, _disks(entries)) for s, mp, _t, _o in entries if mp == "/"), None)


def partitions_named(fstab: str, fss: list[Fs], read: dict[str, str]) -> list[tuple[int, str, str, int]]:
    """The guest's partitions for the image's layout, (number, type, mount point, MiB) by number:
    those read (``read``: device -> mount point) and those its fstab names that si-xen does not
    read (swap, an EFI system partition), so that SystemImager makes them on a physical machine;
    and its BIOS boot partition (type bios_grub: no filesystem, no fstab line; grub-pc's on gpt)."""
    entries = parse_fstab(fstab)
    disks = _disks(entries)
    named = {dev: (mp, "") for dev, mp in read.items()}
    named.update({f.dev: ("", BIOS_BOOT) for f in fss if f.ptype.lower() == BIOS_BOOT_GUID and f.number})
    for spec, mp, fstype, _opts in entries:
        fs = find(spec, fss, disks)
        if fs is not None and fs.dev not in named and (fstype == "swap" or fs.type == "swap" or mp.startswith("/")):
            named[fs.dev] = ("", "swap") if "swap" in (fstype, fs.type) else ("/" + mp.strip("/"), fstype)
    # LVs become plain partitions after the disk's own (a physical machine's layout has no LVM here)
    last = max([f.number for f in fss if not f.lv and f.dev in named] + [0])
    lvs = sorted((f for f in fss if f.lv and f.dev in named), key=lambda f: (named[f.dev][0] or "~", f.lv))
    number = {f.dev: f.number or 1 for f in fss if not f.lv} | {f.dev: last + i for i, f in enumerate(lvs, 1)}
    # the type blkid found, else the fstab's (an unformatted swap partition has none)
    return sorted((number[f.dev], named[f.dev][1] if named[f.dev][1] == BIOS_BOOT else f.type or named[f.dev][1] or "swap",
                   named[f.dev][0], max(1, f.size >> 20)) for f in fss if f.dev in named)


def mapping(fstab: str, fss: list[Fs], root: Fs) -> tuple[list[tuple[str, str, str]], list[str]]:
    """The guest's filesystems on this disk, (device, type, mount point), / first; and a line for
    each local entry left out (not on this disk, or of a type this host cannot read)."""
    entries = parse_fstab(fstab)
    disks = _disks(entries)
    out, left, used = [(root.dev, root.type, "/")], [], {root.dev}
    for spec, mp, fstype, opts in entries:
        if mp == "/" or _local(spec, mp, fstype, opts):
            continue
        mp = "/" + mp.strip("/")
        fs = find(spec, fss, disks)
        if fs is None:
            left.append(f"{mp} ({spec} in the guest's fstab) is not on this disk image: its files are not captured")
        elif fs.type not in RO_OPTS:
            left.append(f"{mp} ({spec}) is {fs.type or 'no filesystem'}, which si_getxenimage does not read: "
                        "its files are not captured")
        elif fs.dev not in used:
            used.add(fs.dev)
            out.append((fs.dev, fs.type, mp))
    return out[:1] + sorted(out[1:], key=lambda d: (d[2].count("/"), d[2])), left  # a parent before its children


def _mount(fs: Fs, at: str) -> bool:
    res = proc.run(["mount", "-o", f"{RO_OPTS[fs.type]},nosuid,nodev,noexec", "-t", fs.type, fs.dev, at], ok=(0, 32))
    return res.returncode == 0


def _umount(at: str) -> None:
    proc.run(["umount", at])


def child(spec: dict) -> dict:
    """In the private namespace: each readable filesystem mounted in turn at ``where``, the root
    picked, then the guest's tree mounted and read for notes."""
    from ..guestfs import Guest, GuestPathError
    from .fromdisk_notes import notes

    fss, where = [Fs(**f) for f in spec["filesystems"]], spec["where"]
    cands, bad = [], []
    for fs in (f for f in fss if f.type in RO_OPTS):
        if not _mount(fs, where):
            bad.append(f"{fs.named()} cannot be mounted")
            continue
        g = Guest(where)
        try:
            fstab = g.read_text("etc/fstab")
            if fstab is not None:
                cands.append((fs, fstab, g.isfile("etc/os-release")))
        except GuestPathError as e:  # a link loop planted there: no guest's / to read
            bad.append(f"{fs.named()}: {e.gpath} {e.reason}")
        _umount(where)
    # Several filesystems with an fstab (a rescue system beside the guest): the one its own fstab
    # names as /, else the one with an os-release.
    if len(cands) > 1:
        cands = ([c for c in cands if names_as_root(c[1], fss) == c[0]] or [c for c in cands if c[2]] or cands)
    if len(cands) != 1:
        return {"root": None, "candidates": [c[0].named() for c in cands], "bad": bad}
    root, fstab, _ = cands[0]
    disks, left = mapping(fstab, fss, root)
    mounted, kept = [], []
    for dev, fstype, mp in disks:
        fs = next(f for f in fss if f.dev == dev)
        try:
            at = where if mp == "/" else Guest(where).path(mp)
        except GuestPathError as e:
            left.append(f"{mp}: {e.reason} in the guest's /: its files are not captured")
            continue
        if at != where and (not os.path.isdir(at) or os.path.islink(at)):
            left.append(f"{mp} is not a directory in the guest's /: its files are not captured")
        elif not _mount(fs, at):
            left.append(f"{mp} ({fs.named()}) cannot be mounted: its files are not captured")
        else:
            mounted.append(at)
            kept.append((dev, fstype, mp))
    try:
        found = notes(Guest(where))
    finally:
        for at in reversed(mounted):
            _umount(at)
    layout = partitions_named(fstab, fss, {dev: mp for dev, _t, mp in kept})
    return {"root": root.dev, "disks": kept, "left": left, "notes": found, "bad": bad, "layout": layout}


def run(fss: list[Fs], where: str) -> dict:
    """``child`` in its own mount namespace; ``where`` an existing empty directory."""
    spec = {"filesystems": [asdict(f) for f in fss], "where": where}
    argv, env = proc.in_mount_namespace(__name__, json.dumps(spec))
    out = proc.run(argv, env=env).stdout
    return json.loads(out)


def main(argv: list[str]) -> int:
    sys.stdout.write(json.dumps(child(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
