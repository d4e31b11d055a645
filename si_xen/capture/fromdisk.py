"""Another hypervisor's disk image (raw, qcow2, VMDK, VHD, VHDX) opened read-only, so that
si_getxenimage --from-disk can capture its guest's filesystems (V2V).

``attached(path, work_dir, say)`` yields a Foreign: the guest's filesystems as block devices
with their types and guest mount points, / first (found by fromdisk_probe.py: the root holds
etc/fstab, the others are where that fstab puts them), valid until the with-block ends.

Why this way: a dom0's kernel may have loop devices but no device-mapper, and reads no partition
table, so a non-raw image is converted to a sparse raw copy (qemu-img convert), and each
partition is read through a read-only loop device at its offset (partx reads the table). LVM
inside: its LVs mapped read-only by device-mapper where the host has it, never activated
(fromdisk_lvm.py). Nothing is left behind, even by a SIGKILL: the copy is an O_TMPFILE in
work_dir (no name: it goes with its last user), each loop device is made autoclear while we
hold it open (it detaches when its last user closes it), the probing mounts live in a private
mount namespace; only LVM's maps outlive a SIGKILL, until the next capture removes them.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field

from .. import proc, rollback
from ..errors import Fatal
from ..storage.mount import RO_OPTS, unclean
from .fromdisk_lvm import volumes as lvm_volumes
from .fromdisk_probe import Fs
from .fromdisk_probe import run as probe

FORMATS = {"raw": "raw", "qcow2": "qcow2", "vmdk": "VMDK", "vpc": "VHD", "vhdx": "VHDX"}  # qemu-img's name: ours
CONVERT = "convert it with qemu-img convert -O qcow2 (or -O raw) and capture the result"
MIB = 2**20
EXTENDED = {"0x5", "0xf", "0x85"}  # DOS extended partitions: containers of the logical ones partx lists too
LOOP_GET_STATUS64, LOOP_SET_STATUS64, LO_FLAGS_AUTOCLEAR, FLAGS_AT = 0x4C05, 0x4C04, 4, 52  # linux/loop.h


@dataclass(frozen=True)
class Foreign:
    disks: list[tuple[str, str, str]]  # (block device, fs type, guest mount point), "/" first
    fmt: str  # qemu-img's format name
    notes: tuple[str, ...]  # another hypervisor's tools and drivers found in the guest
    sizes: dict[str, int] = field(default_factory=dict)  # guest mount point: its partition's (or disk's) MiB
    replay: tuple[str, ...] = ()  # devices of our own raw copy whose journals hold changes: replayed when read
    layout: tuple[tuple[int, str, str, int], ...] = ()  # (partition number, type, mount point, MiB): probe.partitions_named
    label: str = "msdos"  # the partition table's kind, for the layout: gpt or msdos


def inspect(path: str) -> dict:
    """qemu-img's facts about the image; Fatal for anything but a whole, self-contained image of
    a format we read (a backing or data file would be read from wherever the image says)."""
    if not os.path.exists(path):
        raise Fatal(f"disk image {path} does not exist", "give the path of the other hypervisor's disk image file")
    if os.path.isdir(path):
        raise Fatal(f"disk image {path} is a directory", "give the disk image file in it (.vmdk, .qcow2, .vhdx...)")
    path = os.path.abspath(path)  # qemu-img names a VMDK's extents as it opened them: absolute
    if not proc.which("qemu-img"):
        return _raw_without_qemu_img(path)
    try:
        info = json.loads(proc.run(["qemu-img", "info", "--output=json", path], timeout=300).stdout)
    except proc.ProcError as e:
        raise Fatal(f"disk image {path} cannot be read: {_tail(e)}",
                    "check it is a whole disk image, not in use (qemu-img check)") from None
    fmt = info.get("format", "?")
    if fmt not in FORMATS:
        raise Fatal(f"disk image {path} is of format {fmt}, which si_getxenimage does not read "
                    f"(raw, qcow2, vmdk, vhd, vhdx)", CONVERT)
    data = (info.get("format-specific") or {}).get("data") or {}
    if info.get("backing-filename") or data.get("data-file"):
        raise Fatal(f"disk image {path} is not self-contained: it reads "
                    f"{info.get('backing-filename') or data.get('data-file')}", f"flatten it: {CONVERT}")
    if info.get("encrypted") or data.get("corrupt"):
        raise Fatal(f"disk image {path} is {'encrypted' if info.get('encrypted') else 'marked corrupt'}",
                    "decrypt or repair it (qemu-img convert / qemu-img check -r all on a copy) and capture that")
    here = os.path.dirname(os.path.realpath(path))
    for ext in data.get("extents") or []:  # a VMDK descriptor names its data files: they must be its own
        f = os.path.realpath(os.path.join(here, ext.get("filename") or "/"))
        if os.path.dirname(f) != here or not os.path.isfile(f):
            raise Fatal(f"disk image {path} reads {ext.get('filename')}, which is not a file beside it",
                        f"keep the VMDK's extent files beside it, or {CONVERT}")
    return info


# The other formats' signatures (offset, bytes; negative: from the end), for a host without qemu-img
MAGIC = ((0, b"QFI\xfb"), (0, b"KDMV"), (0, b"# Disk DescriptorFile"), (0, b"vhdxfile"), (0, b"conectix"),
         (-512, b"conectix"), (64, b"\x7f\x10\xda\xbe"), (0, b"COWD"))


def _raw_without_qemu_img(path: str) -> dict:
    """Where qemu-img is not installed (a dom0 without qemu-utils): a raw image is read as it is,
    the other formats (known by their signatures) refused with the fix."""
    try:
        with open(path, "rb") as f:
            head, size = f.read(4096), os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 512))
            tail = f.read(512)
    except OSError as e:
        raise Fatal(f"disk image {path} cannot be read: {e.strerror}", "check it is a readable disk image file") from None
    if any((tail if at < 0 else head[at:]).startswith(magic) for at, magic in MAGIC):
        raise Fatal(f"disk image {path} is no raw image, and qemu-img is not installed to read it",
                    "install qemu-utils (apt-get install qemu-utils), or capture a raw copy of it")
    return {"format": "raw", "virtual-size": size}


def _tail(e: proc.ProcError) -> str:
    lines = (e.result.stderr or e.result.stdout).strip().splitlines()
    return lines[-1].removeprefix("qemu-img: ") if lines else f"qemu-img exited {e.result.returncode}"


def _data_bytes(path: str, fmt: str, virtual: int) -> int:
    """What a sparse raw copy takes: the image's data extents (at most its virtual size)."""
    try:
        extents = json.loads(proc.run(["qemu-img", "map", "--output=json", "-f", fmt, path], timeout=300).stdout)
        return min(virtual, sum(e["length"] for e in extents if e.get("data") and not e.get("zero")))
    except (proc.ProcError, ValueError, KeyError, TypeError):
        return virtual


def _converted(path: str, info: dict, work_dir: str, say, undo: ExitStack) -> str:
    """A sparse raw copy of the image in ``work_dir``, unnamed; the path its users open."""
    fmt, virtual = info["format"], int(info["virtual-size"])
    if not proc.which("qemu-img"):
        raise Fatal(f"disk image {path} needs a private copy (a journal to replay), and qemu-img is not installed",
                    "install qemu-utils (apt-get install qemu-utils)")
    need = _data_bytes(path, fmt, virtual)
    try:
        st = os.statvfs(work_dir)
    except OSError as e:
        raise Fatal(f"work directory {work_dir}: {e.strerror}", "give an existing directory with room") from None
    free = st.f_bavail * st.f_frsize
    if need + need // 50 + 64 * MIB > free:  # a margin for the filesystem's own metadata
        raise Fatal(f"{work_dir} has {free // MIB} MiB free; a raw copy of {path} ({FORMATS[fmt]}) needs "
                    f"about {need // MIB + 64} MiB", "free space there, or capture with a work directory that has it")
    try:
        fd = os.open(work_dir, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as e:
        raise Fatal(f"work directory {work_dir} cannot hold an unnamed temporary file: {e.strerror}",
                    "give a work directory on ext4, XFS, btrfs or tmpfs") from None
    undo.callback(os.close, fd)
    os.ftruncate(fd, virtual)
    copy = f"/proc/{os.getpid()}/fd/{fd}"
    say(f"converting {path} ({FORMATS[fmt]}, {virtual // MIB} MiB) to a sparse raw copy in {work_dir} "
        f"(about {-(-need // MIB)} MiB)")
    try:  # -n: into our file, known zero (fresh and sparse): qemu-img writes the data only
        proc.run(["qemu-img", "convert", "-n", "--target-is-zero", "-f", fmt, "-O", "raw", path, copy])
    except proc.ProcError as e:
        raise Fatal(f"disk image {path} could not be converted: {_tail(e)}",
                    "check it (qemu-img check) and the room in the work directory") from None
    return copy


def _attach(image: str, undo: ExitStack, start: int = 0, size: int = 0, writable: bool = False) -> str:
    """A loop device of ``image`` (bytes ``start`` to ``start + size``), autoclear while we hold
    it; read-only unless ``writable`` (our own copy, whose journals may be replayed)."""
    part = ["--offset", str(start), "--sizelimit", str(size)] if size else []
    ro = [] if writable else ["--read-only"]
    with rollback.critical():  # attached and its undo registered: no signal in between
        loop = proc.run(["losetup", *ro, "--find", "--show", *part, image]).stdout.strip()
        fd = os.open(loop, os.O_RDONLY)
        undo.callback(_detach, loop, fd)
    status = bytearray(232)  # struct loop_info64
    fcntl.ioctl(fd, LOOP_GET_STATUS64, status)
    flags = struct.unpack_from("<I", status, FLAGS_AT)[0]
    struct.pack_into("<I", status, FLAGS_AT, flags | LO_FLAGS_AUTOCLEAR)
    fcntl.ioctl(fd, LOOP_SET_STATUS64, bytes(status))
    return loop


def _detach(loop: str, fd: int) -> None:
    os.close(fd)  # autoclear: our last close detaches it
    sysfs = f"/sys/block/{os.path.basename(loop)}/loop"
    for _ in range(50):
        if not os.path.exists(sysfs):
            return
        time.sleep(0.1)
    proc.run(["losetup", "-d", loop], ok=(0, 1))  # another user kept it: detached when it closes


def partitions(image: str) -> list[dict]:
    """The image's partition table as partx reads it (empty: none, the filesystem is the whole disk)."""
    res = proc.run(["partx", "-g", "-P", "-o", "NR,START,SECTORS,UUID,NAME,TYPE", image], ok=(0, 1))
    if res.returncode:
        if "failed to read partition table" not in res.stderr:
            raise proc.ProcError(res)
        return []
    rows = [dict(re.findall(r'(\w+)="([^"]*)"', line)) for line in res.stdout.splitlines()]
    return [r for r in rows if r.get("TYPE", "").lower() not in EXTENDED]


def _sectors(dev: str) -> int:
    with open(f"/sys/block/{os.path.basename(dev)}/size") as f:
        return int(f.read())


def filesystems(image: str, undo: ExitStack, writable: bool = False) -> list[Fs]:
    """A loop device for each partition (or the whole disk, unpartitioned), its filesystem probed
    by blkid -p. Partitions by offset: this kernel reads no partition table (losetup --partscan)."""
    out = []
    for p in partitions(image) or [{"NR": "0"}]:
        start, size = int(p.get("START", 0)) * 512, int(p.get("SECTORS", 0)) * 512
        dev = _attach(image, undo, start, size, writable)
        res = proc.run(["blkid", "-p", "-o", "export", dev], ok=(0, 2, 8))  # 2: nothing found, 8: ambivalent
        kv = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
        out.append(Fs(dev, kv.get("TYPE", ""), int(p["NR"]), kv.get("UUID", ""), kv.get("LABEL", ""),
                      p.get("UUID", ""), p.get("NAME", ""), size or _sectors(dev) * 512, p.get("TYPE", "")))
    return out


@contextmanager
def attached(path: str, work_dir: str, say: Callable[[str], None]) -> Iterator[Foreign]:
    """The guest's filesystems on disk image ``path``, read-only, while in the block (see above)."""
    undo = ExitStack()
    try:
        # SIGTERM, SIGHUP: unwound as Ctrl-C, through the finally (handlers: the main thread's only)
        main = threading.current_thread() is threading.main_thread()
        with rollback.signals_raise() if main else nullcontext():
            info = inspect(path)
            fmt = info["format"]
            say(f"{path}: {FORMATS[fmt]} disk image of {int(info['virtual-size']) // MIB} MiB")
            private = fmt != "raw"
            image = _converted(path, info, work_dir, say, undo) if private else path
            fss = _filesystems(path, image, undo, private)
            dirty = _dirty(fss)
            if dirty and not private:  # the admin's own file is never written: a copy is
                say(f"{path}: {', '.join(f.named() for f in dirty)} not cleanly unmounted: "
                    "reading a private copy, its journal replayed")
                undo.close()
                image, private = _converted(path, info, work_dir, say, undo), True
                fss = _filesystems(path, image, undo, private)
                dirty = _dirty(fss)
            found = _guest(path, fss)
        named = {f.dev: f.named() for f in fss}
        say("the guest's " + "; ".join(f"{mp}: {named[dev]}" for dev, _fs, mp in found["disks"]))
        for line in found["left"]:
            say(f"WARNING: {line}")
        size = {f.dev: f.size // MIB for f in fss}
        yield Foreign([tuple(d) for d in found["disks"]], fmt, tuple(found["notes"]),
                      {mp: size[dev] for dev, _fs, mp in found["disks"]}, tuple(f.dev for f in dirty) if private else (),
                      tuple(tuple(p) for p in found["layout"]),
                      "gpt" if any(len(f.partuuid) == 36 for f in fss) else "msdos")
    finally:
        with rollback.critical():
            undo.close()


def _dirty(fss: list[Fs]) -> list[Fs]:
    return [f for f in fss if f.type in RO_OPTS and unclean(f.dev, f.type)]


def _filesystems(path: str, image: str, undo: ExitStack, writable: bool) -> list[Fs]:
    """The disk's filesystems: its partitions', then those of the LVs on its LVM physical volumes."""
    try:
        fss = filesystems(image, undo, writable)
    except proc.ProcError as e:
        raise Fatal(f"the partitions of disk image {path} cannot be read: {e}",
                    "check its partition table (partx --show)") from None
    try:
        return fss + lvm_volumes(path, [f for f in fss if f.type == "LVM2_member"], undo, writable)
    except proc.ProcError as e:
        raise Fatal(f"the logical volumes of disk image {path} cannot be mapped: {e}",
                    "report this as a bug, with the disk's LVM layout (pvs, lvs --segments on a copy)") from None


def _guest(path: str, fss: list[Fs]) -> dict:
    where = tempfile.mkdtemp(prefix="si-xen.fromdisk.", dir="/run" if os.path.isdir("/run") else "/tmp")
    try:
        found = probe(fss, where)
    except proc.ProcError as e:
        raise Fatal(f"reading the filesystems of disk image {path} failed: {e}", "report this as a bug") from None
    finally:
        os.rmdir(where)  # the mounts were in the child's namespace
    if found["root"] is None:
        seen = "; ".join([f.named() for f in fss] + found["bad"])
        if found["candidates"]:
            raise Fatal(f"disk image {path} holds more than one system: {', '.join(found['candidates'])} "
                        "each hold a guest's /", "capture a copy of the disk without the others")
        raise Fatal(f"disk image {path} has no root filesystem to capture: none holds etc/fstab (found: {seen})",
                    f"give the disk that holds the guest's / (on {', '.join(sorted(RO_OPTS))})")
    return found
