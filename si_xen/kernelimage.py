"""What a kernel file is, read from its headers (never run): an x86 bzImage, an ELF vmlinux,
or a compressed ELF (what Xen's PV loader takes). Cheap: a few header bytes and a size."""

from __future__ import annotations

import os
import struct

from .initramfs import MAGIC

MAX_BYTES = 256 * 2**20  # no Linux kernel is this large; a file that is is not one
XEN_PROTOCOL = 0x0208  # Xen's bzImage loader needs the payload fields of boot protocol 2.08


def problem(path: str) -> str | None:
    """What is wrong with the kernel at ``path`` (a dom0 path), or None when it is one."""
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    if size < 4096:
        return f"is {size} bytes, too small to be a kernel"
    if size > MAX_BYTES:
        return f"is {size // 2**20} MiB, too large to be a kernel"
    with open(path, "rb") as f:
        head = f.read(4096)
    if head[0x202:0x206] == b"HdrS":
        return _bzimage(head, size)
    if head.startswith(b"\x7fELF"):
        return _elf(path, head, size)
    if any(head.startswith(m) for m in MAGIC):
        return None  # a compressed vmlinux: Xen's PV loader unpacks it
    return "is not a Linux kernel (neither a bzImage, an ELF vmlinux nor a compressed one)"


def _bzimage(head: bytes, size: int) -> str | None:
    version = struct.unpack_from("<H", head, 0x206)[0]
    if version < XEN_PROTOCOL:
        return f"is a bzImage of boot protocol {version >> 8}.{version & 0xff:02d}, older than the 2.08 Xen needs"
    setup = ((head[0x1F1] or 4) + 1) * 512
    body = struct.unpack_from("<I", head, 0x1F4)[0] * 16
    if size < setup + body:
        return f"is truncated: {size} bytes of the {setup + body} its bzImage header gives"
    offset, length = struct.unpack_from("<II", head, 0x248)
    if length == 0 or offset + length > body:
        return "is a corrupt bzImage: its compressed kernel lies outside the file"
    return None


def _elf(path: str, head: bytes, size: int) -> str | None:
    if len(head) < 64 or head[4] not in (1, 2) or head[5] != 1:
        return "is a corrupt ELF file (not a little-endian 32- or 64-bit ELF)"
    wide = head[4] == 2
    if struct.unpack_from("<H", head, 18)[0] not in (3, 62):  # EM_386, EM_X86_64
        return "is an ELF file for another machine than x86"
    phoff, (entsize, count) = ((struct.unpack_from("<Q", head, 32)[0], struct.unpack_from("<HH", head, 54)) if wide
                               else (struct.unpack_from("<I", head, 28)[0], struct.unpack_from("<HH", head, 42)))
    if count == 0 or entsize < (56 if wide else 32) or phoff + entsize * count > size:
        return "is a corrupt ELF file: its program headers lie outside the file"
    with open(path, "rb") as f:
        f.seek(phoff)
        table = f.read(entsize * count)
    layout = "<I4xQ16xQ" if wide else "<II8xI"  # p_type, p_offset, p_filesz
    for i in range(count):
        kind, offset, filesz = struct.unpack_from(layout, table, i * entsize)
        if kind == 1 and offset + filesz > size:  # PT_LOAD
            return f"is truncated: {size} bytes, but its ELF segments reach {offset + filesz}"
    return None
