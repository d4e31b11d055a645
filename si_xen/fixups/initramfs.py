"""List the member names of an initramfs (concatenated newc cpio archives, maybe compressed).

Read in-process (gzip, xz, lzma, bzip2) or with the dom0's zstd/lz4; never a guest binary.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tempfile

from si_xen import proc

_MAGIC = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"\x5d\x00\x00": "lzma", b"BZh": "bzip2",
          b"\x28\xb5\x2f\xfd": "zstd", b"\x02\x21\x4c\x18": "lz4", b"\x04\x22\x4d\x18": "lz4"}


class Unreadable(Exception):
    pass


def _decompress(data: bytes) -> bytes:
    kind = next((k for m, k in _MAGIC.items() if data.startswith(m)), None)
    if kind == "gzip":
        return gzip.decompress(data)
    if kind in ("xz", "lzma"):
        return lzma.LZMADecompressor().decompress(data)
    if kind == "bzip2":
        return bz2.decompress(data)
    if kind in ("zstd", "lz4") and proc.which(kind):
        with tempfile.TemporaryDirectory(prefix="si-xen-initrd.") as tmp:
            src, out = os.path.join(tmp, "in"), os.path.join(tmp, "out")
            with open(src, "wb") as f:
                f.write(data)
            proc.run([proc.which(kind), "-q", "-d", "-f", src, "-o", out], ok=(0, 1))
            with open(out, "rb") as f:
                return f.read()
    raise Unreadable(f"{kind or 'unknown'} compression")


def members(data: bytes) -> list[str]:
    names: list[str] = []
    pos = 0
    while pos < len(data):
        if data[pos:pos + 1] == b"\0":
            pos += 1
            continue
        if data[pos:pos + 6] not in (b"070701", b"070702"):
            return names + members(_decompress(data[pos:]))
        hdr = data[pos:pos + 110]
        namesize, filesize = int(hdr[94:102], 16), int(hdr[54:62], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode(errors="replace")
        pos += (110 + namesize + 3) & ~3
        pos += (filesize + 3) & ~3
        if name != "TRAILER!!!":
            names.append(name)
    return names
