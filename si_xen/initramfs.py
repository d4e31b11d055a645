"""Read an initramfs the way the kernel unpacks it, in constant memory: the member names
(is xen-blkfront in there?) and the unpacked size (how much memory the guest needs).

Uncompressed cpio archives (early microcode) are parsed in place, compressed ones are
decompressed as a stream (gzip, xz, lzma, bzip2 in-process; zstd, lz4, lzop by the dom0's
tool), all to the end: a file that would not unpack whole in the guest is Unreadable,
saying why. Nothing of the guest is executed.
Results are cached by the file's identity: clones of one image share their initramfs.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import os
import zlib
from dataclasses import dataclass

from . import atomic, proc

MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"\xfd7zXZ\x00": "xz", b"\x5d\x00\x00": "lzma",
          b"BZh": "bzip2", b"\x02\x21\x4c\x18": "lz4", b"\x04\x22\x4d\x18": "lz4", b"\x89LZO": "lzop"}  # fmt: skip
# Decompressed here (exactly where each stream ends is known); the others by the dom0's tool.
INPROCESS = {"gzip": lambda: zlib.decompressobj(31), "xz": lzma.LZMADecompressor, "lzma": lzma.LZMADecompressor,
             "bzip2": bz2.BZ2Decompressor}
MAX_UNPACKED = 4 * 2**30  # no guest boots from more; a file that unpacks to more is a bomb
# Debian's MODULES=most initramfs holds ~4,000 members; millions of empty ones (a 14 MiB gzip
# reaches 4 GiB of headers) would cost GBs of memory here before MAX_UNPACKED stops them
MAX_MEMBERS = 500_000
CHUNK = 1 << 20


_root: str | None = None  # [paths] cache_dir of the settings loaded last (config.load)


def use_cache_root(path: str) -> None:
    global _root
    _root = path


def cache_dir() -> str:
    """Where scans and Xen-sized initramfs files are kept: SI_XEN_CACHE (the tests'), else the
    config's cache_dir, else si-xen's default."""
    return os.path.join(os.environ.get("SI_XEN_CACHE") or _root or "/var/cache/si-xen", "initramfs")


class Unreadable(Exception):
    """The initramfs is corrupt, truncated or not one: the message says what is wrong."""


class NoTool(Unreadable):
    """The initramfs uses a compression this dom0 has no tool for: the tool is ``.tool``."""

    def __init__(self, tool: str):
        super().__init__(f"is {tool}-compressed and this dom0 has no {tool} to check it")
        self.tool = tool


@dataclass(frozen=True)
class Scan:
    names: tuple[str, ...]
    unpacked: int  # bytes

    @property
    def modules(self) -> set[str]:
        """The kernel modules it holds, by module name ("xen-blkfront" for xen_blkfront.ko.xz)."""
        return {os.path.basename(n).split(".ko")[0].replace("_", "-") for n in self.names if ".ko" in n}


class _Reader:
    """Reads ``src`` counting bytes; ``unread`` gives back what a decompressor did not use."""

    def __init__(self, src):
        self.src, self.count, self.back = src, 0, b""

    def unread(self, data: bytes) -> None:
        self.back, self.count = data + self.back, self.count - len(data)

    def read(self, n: int) -> bytes:
        chunks, self.back = [self.back[:n]], self.back[n:]
        n -= len(chunks[0])
        while n > 0:
            b = self.src.read(min(n, CHUNK))
            if not b:
                break
            chunks.append(b)
            n -= len(b)
        data = b"".join(chunks)
        self.count += len(data)
        if self.count > MAX_UNPACKED:
            raise Unreadable(f"unpacks to more than {MAX_UNPACKED // 2**30} GiB")
        return data

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.read(min(n, CHUNK)))
            if got == 0:
                raise Unreadable("is truncated: a cpio archive ends inside a member")
            n -= got


class _Inflated:
    """One compressed stream read from ``outer`` and decompressed in-process, in bounded
    chunks (a bomb never sits in memory); at its end what follows is given back to ``outer``."""

    def __init__(self, outer: _Reader, tool: str):
        self.outer, self.tool, self.d = outer, tool, INPROCESS[tool]()
        self.done = False

    def read(self, n: int) -> bytes:
        while not self.done:
            zlib_like = hasattr(self.d, "unconsumed_tail")
            hungry = not self.d.unconsumed_tail if zlib_like else self.d.needs_input
            data = self.outer.read(CHUNK) if hungry else b""
            if hungry and not data:
                raise Unreadable(f"is truncated: its {self.tool} data ends early")
            try:
                out = self.d.decompress((self.d.unconsumed_tail if zlib_like else b"") + data, min(n, CHUNK))
            except (zlib.error, lzma.LZMAError, OSError, EOFError) as e:
                raise Unreadable(f"is corrupt: its {self.tool} data does not decompress ({e})") from None
            if self.d.eof:
                self.done = True
                self.outer.unread(self.d.unused_data)
            if out:
                return out
        return b""


def _cpio(r: _Reader, names: list[str], sink=None) -> bytes:
    """Parse newc archives until something that is not one; return those bytes (b"" at the end).
    ``sink(header, name, reader, size)``, if given, sees every member (trailers too) and reads
    its ``size`` data bytes from ``reader`` (initramfs_slim rewrites the archive from it)."""
    first = b""
    while True:
        head = first + r.read(6 - len(first))
        first = b""
        if head[:1] == b"\0":  # padding between archives
            first = head.lstrip(b"\0")
            continue
        if head not in (b"070701", b"070702"):
            return head
        hdr = head + r.read(104)
        try:
            namesize, filesize = int(hdr[94:102], 16), int(hdr[54:62], 16)
        except ValueError:
            raise Unreadable("is corrupt: a cpio header is not one" if len(hdr) == 110 else
                             "is truncated: a cpio archive ends inside a header") from None
        raw = r.read(namesize)
        if len(raw) != namesize or namesize == 0:
            raise Unreadable("is truncated: a cpio archive ends inside a header")
        r.skip(-(110 + namesize) % 4)
        if sink is None:
            r.skip(filesize)
        else:
            sink(hdr, raw[:-1], r, filesize)
        r.skip(-filesize % 4)
        name = raw[:-1].decode(errors="replace")
        if name != "TRAILER!!!":
            names.append(name)
            if len(names) > MAX_MEMBERS:
                raise Unreadable(f"holds more than {MAX_MEMBERS:,} files: no guest's initramfs does")


def scan(path: str) -> Scan:
    """The initramfs at ``path`` unpacked as the kernel would, to its end: uncompressed cpio
    archives and compressed streams of them, in any sequence. Unreadable if it would not
    unpack whole in the guest (a member cut short, a stream that ends early, junk)."""
    return unpack(path)[0]


@dataclass(frozen=True)
class Segment:
    """A run of the file: cpio archives as they are (``tool`` None) or one compressed stream
    (for a dom0 tool's: the rest of the file), bytes ``start`` to ``end``, unpacking to ``unpacked``."""

    tool: str | None
    start: int
    end: int
    unpacked: int


def unpack(path: str, sink=None) -> tuple[Scan, list[Segment]]:
    """scan(), with the file's segments; ``sink`` (see _cpio) sees every member, in order, and
    is told where each segment begins by ``sink.segment(tool)`` if it has that method."""
    names: list[str] = []
    segments: list[Segment] = []
    begin = getattr(sink, "segment", lambda tool: None)
    with open(path, "rb", buffering=0) as f:  # unbuffered: a decompressor tool reads from our offset
        outer, unpacked = _Reader(f), 0
        while True:
            before = outer.count
            begin(None)
            rest = _cpio(outer, names, sink)
            outer.unread(rest)
            unpacked += outer.count - before
            segments.append(Segment(None, before, outer.count, outer.count - before))
            if not rest:
                if not names:
                    raise Unreadable("is empty (0 bytes)" if outer.count == 0 else "holds nothing but zeros")
                return Scan(tuple(names), unpacked), segments
            tool = next((t for m, t in MAGIC.items() if rest.startswith(m)), None)
            if tool is None:
                if names:
                    raise Unreadable(f"is corrupt: after {len(names)} cpio members comes data that is neither "
                                     "a cpio archive nor a known compression")
                raise Unreadable("is not an initramfs: neither a cpio archive nor a known compression")
            count, start = len(names), outer.count
            begin(tool)
            inner = _Reader(_Inflated(outer, tool)) if tool in INPROCESS else None
            if inner is None:
                inner = _tool(f, outer, tool, names, sink)
            elif _cpio(inner, names, sink):
                raise Unreadable(f"is corrupt: its {tool} data does not unpack to cpio archives")
            if len(names) == count:
                raise Unreadable(f"is corrupt: its {tool} data holds no cpio archive")
            segments.append(Segment(tool, start, outer.count, inner.count))
            unpacked += inner.count
            if unpacked > MAX_UNPACKED:
                raise Unreadable(f"unpacks to more than {MAX_UNPACKED // 2**30} GiB")


def _tool(f, outer: _Reader, tool: str, names: list[str], sink=None) -> _Reader:
    """The rest of the file through the dom0's ``tool -dc`` (no Python module for it)."""
    if not proc.which(tool):
        raise NoTool(tool)
    os.lseek(f.fileno(), outer.count, os.SEEK_SET)
    with proc.reading([proc.which(tool), "-dc"], stdin=f) as p:
        inner = _Reader(p.stdout)
        junk = _cpio(inner, names, sink)
        while inner.read(CHUNK):  # read to the end: the tool's verdict needs it
            pass
    if p.returncode != 0:
        raise Unreadable(f"is truncated or corrupt: its {tool} data does not decompress to its end")
    if junk:
        raise Unreadable(f"is corrupt: its {tool} data does not unpack to cpio archives")
    outer.count, outer.back = os.fstat(f.fileno()).st_size, b""
    return inner


def _key(path: str) -> str:
    # Not the device and inode: a VM's copy of its image's file (fixups/kernel.py reads it on the VM's
    # disk) must hit, or every VM would read its 35 MB again. A file crafted to match another's size,
    # mtime and both ends gets that one's scan: only an image whose author has those bytes can do it.
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
        return Scan(tuple(d["names"]), int(d["unpacked"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    s = scan(path)
    try:
        os.makedirs(cdir, exist_ok=True)
        atomic.write(key, json.dumps({"names": s.names, "unpacked": s.unpacked}))
    except OSError:
        pass  # a cache we cannot write only costs time
    return s
