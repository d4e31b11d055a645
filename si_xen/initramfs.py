"""Read an initramfs the way the kernel unpacks it, in constant memory: the member names
(is xen-blkfront in there?) and the unpacked size (how much memory the guest needs).

Leading uncompressed cpio archives (early microcode) are parsed in place; the compressed
rest is streamed through the dom0's decompressor. Nothing of the guest is executed.
Results are cached by the file's identity: clones of one image share their initramfs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from . import atomic, proc

_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz", b"\x5d\x00\x00": "xz",
          b"BZh": "bzip2", b"\x02\x21\x4c\x18": "lz4", b"\x04\x22\x4d\x18": "lz4", b"\x89LZO": "lzop"}  # fmt: skip
def cache_dir() -> str:
    return os.path.join(os.environ.get("SI_XEN_CACHE", "/var/cache/si-xen"), "initramfs")


class Unreadable(Exception):
    """The initramfs uses a compression this dom0 cannot undo, or is corrupt."""


@dataclass(frozen=True)
class Scan:
    names: tuple[str, ...]
    unpacked: int  # bytes


class _Reader:
    def __init__(self, f):
        self.f, self.count = f, 0

    def read(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            b = self.f.read(min(n, 1 << 20))
            if not b:
                break
            chunks.append(b)
            n -= len(b)
        data = b"".join(chunks)
        self.count += len(data)
        return data

    def skip(self, n: int) -> None:
        if len(self.read(n)) != n:
            raise Unreadable("truncated cpio archive")


def _cpio(r: _Reader, names: list[str], first: bytes = b"") -> bytes:
    """Parse newc archives until something that is not one; return those bytes."""
    while True:
        head = first + r.read(6 - len(first))
        first = b""
        if head[:1] == b"\0":  # padding between archives
            head = head.lstrip(b"\0")
            if not head:
                continue
            first = head
            continue
        if head not in (b"070701", b"070702"):
            return head
        hdr = head + r.read(104)
        namesize, filesize = int(hdr[94:102], 16), int(hdr[54:62], 16)
        name = r.read(namesize)[:-1].decode(errors="replace")
        r.skip(-(110 + namesize) % 4)
        r.skip(filesize + (-filesize % 4))
        if name != "TRAILER!!!":
            names.append(name)


def scan(path: str) -> Scan:
    names: list[str] = []
    with open(path, "rb", buffering=0) as f:  # unbuffered: the decompressor reads from our offset
        outer = _Reader(f)
        rest = _cpio(outer, names)
        if not rest:
            return Scan(tuple(names), outer.count)
        start = outer.count - len(rest)
        head = os.pread(f.fileno(), 8, start)
        tool = next((t for m, t in _MAGIC.items() if head.startswith(m)), None)
        if tool is None or not proc.which(tool):
            raise Unreadable(f"{tool or 'unknown'} compression")
        os.lseek(f.fileno(), start, os.SEEK_SET)
        with proc.reading([proc.which(tool), "-dc"], stdin=f) as p:
            inner = _Reader(p.stdout)
            _cpio(inner, names)
            while inner.read(1 << 20):  # whatever follows is unpacked too
                pass
        if p.returncode not in (0, 2):  # 2: gzip's "trailing garbage ignored"
            raise Unreadable(f"{tool} failed ({p.returncode})")
        return Scan(tuple(names), start + inner.count)


def unpacked_hint(path: str) -> int | None:
    """The unpacked size as the compressed stream records it, without decompressing:
    gzip's ISIZE trailer, zstd's frame content size. None when it does not say."""
    names: list[str] = []
    with open(path, "rb", buffering=0) as f:
        outer = _Reader(f)
        rest = _cpio(outer, names)
        start = outer.count - len(rest)
        size = os.fstat(f.fileno()).st_size
        head = os.pread(f.fileno(), 18, start)
        if head.startswith(b"\x1f\x8b"):
            isize = int.from_bytes(os.pread(f.fileno(), 4, size - 4), "little")
            return start + isize if isize >= size - start else None  # else: several members, or > 4 GiB
        if head.startswith(b"\x28\xb5\x2f\xfd"):
            fhd = head[4]
            single, did, fcs = (fhd >> 5) & 1, fhd & 3, fhd >> 6
            pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[did]
            width = (1 if single else 0, 2, 4, 8)[fcs]
            if width == 0:
                return None
            value = int.from_bytes(head[pos:pos + width], "little") + (256 if width == 2 else 0)
            return start + value
    return None


def _key(path: str) -> str:
    st = os.stat(path)
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(65536))
        f.seek(max(0, st.st_size - 65536))
        h.update(f.read())
    return h.hexdigest()[:24]


def scan_cached(path: str) -> Scan:
    cdir = cache_dir()
    key = os.path.join(cdir, _key(path) + ".json")
    try:
        with open(key) as f:
            d = json.load(f)
        return Scan(tuple(d["names"]), d["unpacked"])
    except (OSError, ValueError, KeyError):
        pass
    s = scan(path)
    try:
        os.makedirs(cdir, exist_ok=True)
        atomic.write(key, json.dumps({"names": s.names, "unpacked": s.unpacked}))
    except OSError:
        pass  # a cache we cannot write only costs time
    return s
