"""Make the guest bootable under Xen and know what its kernel needs.

Modes: ``direct`` (the guest's own kernel and initrd, copied out of its /boot and handed
to Xen), ``pygrub`` and ``pvgrub2`` (a bootloader reads /boot/grub/grub.cfg in the guest).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from . import proc
from .errors import Fatal
from .guestfs import Guest

PVGRUB2 = {"pv": "/usr/lib/grub-xen/grub-x86_64-xen.bin", "pvh": "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"}
INITRD_NAMES = ("initrd.img-{v}", "initramfs-{v}.img", "initrd-{v}.img", "initrd-{v}")
# Decompressors by magic number, for sizing an initramfs as the kernel will unpack it.
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ": "xz", b"\x5d\x00\x00": "xz",
          b"BZh": "bzip2", b"\x02\x21\x4c\x18": "lz4", b"\x89LZO": "lzop"}  # fmt: skip
BASE_MEMORY_MIB = 192  # kernel, page tables and a minimal userland, measured with Debian 12 PV


@dataclass(frozen=True)
class GuestKernel:
    version: str
    kernel: str  # guest path
    initrd: str | None  # guest path


def _vkey(v: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", v)]


def find_kernel(guest: Guest) -> GuestKernel | None:
    """The newest /boot/vmlinu[xz]-VERSION that has a matching initrd (or none at all)."""
    found = []
    for name in guest.listdir("/boot"):
        m = re.fullmatch(r"vmlinu[xz]-(.+)", name)
        if m and guest.isfile(f"/boot/{name}"):
            v = m.group(1)
            initrd = next((f"/boot/{n.format(v=v)}" for n in INITRD_NAMES if guest.isfile(f"/boot/{n.format(v=v)}")), None)
            found.append(GuestKernel(v, f"/boot/{name}", initrd))
    found.sort(key=lambda k: (k.initrd is not None, _vkey(k.version)))
    return found[-1] if found else None


def _cpio_end(f) -> int:
    """Offset after a leading uncompressed newc cpio (early microcode) and its padding."""
    pos = 0
    while True:
        f.seek(pos)
        hdr = f.read(110)
        if len(hdr) < 110 or hdr[:5] != b"07070":
            break
        namesize, filesize = int(hdr[94:102], 16), int(hdr[54:62], 16)
        name = f.read(namesize)
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + filesize + 3) & ~3
        if name.startswith(b"TRAILER!!!"):
            f.seek(pos)
            while (b := f.read(1)) == b"\0":
                pos += 1
            if not b:
                break
    return pos


def initrd_unpacked_mib(path: str) -> int:
    """What the initramfs occupies in the guest's memory once unpacked."""
    with open(path, "rb", buffering=0) as f:  # unbuffered: the child reads from our fd offset
        start = _cpio_end(f)
        f.seek(0, 2)
        total = f.tell()
        f.seek(start)
        head = f.read(6)
        if start >= total:
            return total // 2**20
        tool = next((t for m, t in _MAGIC.items() if head.startswith(m)), None)
        if tool is None:
            return total // 2**20  # uncompressed cpio
        if not proc.which(tool):
            return (start + (total - start) * 4) // 2**20  # typical ratio when we cannot measure
        f.seek(start)
        with tempfile.TemporaryFile(dir="/var/tmp") as out:
            proc.run([tool, "-dc"], stdin=f, stdout=out, ok=(0, 1, 2))
            return (start + os.fstat(out.fileno()).st_size) // 2**20


def memory_needed(guest: Guest, k: GuestKernel) -> int:
    """Memory (MiB) the guest needs to get past its initramfs, rounded up to 32 MiB."""
    need = BASE_MEMORY_MIB + os.path.getsize(guest.path(k.kernel)) // 2**20
    if k.initrd:
        path = guest.path(k.initrd)
        need += os.path.getsize(path) // 2**20 + initrd_unpacked_mib(path)
    return (need + 31) // 32 * 32


def cmdline(root_vdev: str, extra: str = "") -> str:
    return " ".join(x for x in (f"root=/dev/{root_vdev} ro console=hvc0", extra) if x)


def copy_out(guest: Guest, k: GuestKernel, boot_dir: str, undo) -> tuple[str, str | None]:
    """Copy the guest's kernel/initrd out of the guest to where Xen reads them (dom0 side)."""
    if not os.path.isdir(boot_dir):
        os.makedirs(boot_dir)
        undo.push(f"remove {boot_dir}", shutil.rmtree, boot_dir, True)
    out = []
    for gpath, name in ((k.kernel, "vmlinuz"), (k.initrd, "initrd.img")):
        if gpath is None:
            out.append(None)
            continue
        dst = os.path.join(boot_dir, name)
        shutil.copyfile(guest.path(gpath), dst)
        undo.push(f"remove {dst}", _unlink, dst)
        out.append(dst)
    return out[0], out[1]


def _unlink(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)


def write_grub_cfg(guest: Guest, k: GuestKernel, root_vdev: str, boot_is_separate: bool, title: str) -> None:
    """A grub.cfg both pygrub and pvgrub2 read (a golden client's own may name other disks)."""
    prefix = "" if boot_is_separate else "/boot"
    old = "/boot/grub/grub.cfg"
    if guest.isfile(old) and not guest.exists(old + ".si-xen-orig"):
        guest.write_text(old + ".si-xen-orig", guest.read_text(old) or "")
    kname, iname = os.path.basename(k.kernel), os.path.basename(k.initrd) if k.initrd else None
    lines = [
        "# Written by si_mkxenvm: boots this guest under Xen (pygrub or pvgrub2).",
        "set default=0",
        "set timeout=2",
        f"menuentry '{title}' {{",
        f"    linux {prefix}/{kname} {cmdline(root_vdev)}",
    ]
    if iname:
        lines.append(f"    initrd {prefix}/{iname}")
    lines += ["}", ""]
    guest.write_text(old, "\n".join(lines))


def check_supplied(kernel: str | None, initrd: str | None) -> None:
    for what, path in (("kernel", kernel), ("initrd", initrd)):
        if path and not os.path.isfile(path):
            raise Fatal(f"{what} {path} not found", f"give an existing file to --{what}")
    if initrd and not kernel:
        raise Fatal("--initrd given without --kernel", "supply the matching kernel with --kernel")
