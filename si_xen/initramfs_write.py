"""An initramfs written back (initramfs_slim's output): newc cpio archives of the members kept,
in the guest's compression. Segments that lose nothing are copied byte for byte; a rewritten one
is compressed in-process (gzip, xz, lzma, bzip2) or by the dom0's tool (zstd, lz4, lzop).
gzip and xz use both cores: one gzip member deflated in chunks on threads as pigz does, xz as
two streams."""

from __future__ import annotations

import bz2
import lzma
import os
import stat
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor

from . import atomic, proc
from .initramfs import CHUNK

# The guest's compression, faster than its mkinitramfs's: made once per image (cached), while the
# size it loses (gzip 6 -> 1: ~0.5 MB of 6 MB) costs Xen next to nothing to load.
LEVEL = {"gzip": 1, "xz": 0, "lzma": 0, "bzip2": 9, "zstd": 3, "lz4": 1, "lzop": 3}
# By the dom0's tool: zstd -T0 uses both cores; lz4 -l is the legacy frame, the kernel's only one.
TOOL_ARGS = {"zstd": ["-q", "-T0", "-c"], "lz4": ["-q", "-l", "-c"], "lzop": ["-q", "-c"]}
# A rewritten xz segment of this many kept bytes is compressed as two streams on two threads (lzma
# lets go of the GIL): the kernel and xz -d read concatenated streams as one. Never gzip: Xen's PV
# domain builder inflates a gzip ramdisk itself into a buffer sized by the file's last 4 bytes
# (xc_dom_check_gzip), the second stream's size only ("xc_dom_do_gunzip: inflate failed (rc=-5)").
SPLIT = ("xz",)
SPLIT_BYTES = (4 * 2**20, 512 * 2**20)  # below: not worth a thread; above: not held in memory
# gzip as pigz writes it: one member (one header, one deflate stream, one trailer) whose deflate
# data is made in chunks on threads (zlib lets go of the GIL), each primed with the 32 KiB before
# it so the ratio stays; 1 MiB: a slim Debian initramfs (~25 MiB) is ~25 of them for 2 cores.
GZIP_CHUNK = 2**20
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"  # deflate, no name, no mtime, Unix


def write(src: str, dst: str, spool, segments) -> int:
    """``dst`` made of ``src``'s segments: those that lose nothing copied as they are, the
    others rewritten with their compression. Returns the bytes it unpacks to."""
    dropped = {m.seg for m in spool.members if not m.keep}
    unpacked = 0
    with atomic.replacing(dst) as tmp, open(tmp, "wb") as out, open(src, "rb") as f:
        for i, s in enumerate(segments):
            members = [m for m in spool.members if m.seg == i]
            if i not in dropped:
                f.seek(s.start)
                _copy(f, out, s.end - s.start)
                unpacked += s.unpacked
                continue
            if s.tool in TOOL_ARGS:
                with tempfile.TemporaryFile(dir=os.path.dirname(tmp)) as raw:
                    unpacked += _newc(spool, members, raw.write)
                    raw.seek(0)
                    out.flush()
                    tool = proc.which(s.tool)
                    proc.run([tool, f"-{LEVEL[s.tool]}", *TOOL_ARGS[s.tool]], stdin=raw, stdout=out)
                    out.seek(0, os.SEEK_END)
                continue
            kept = sum(m.hdr[6] for m in members if m.keep)
            if s.tool in SPLIT and SPLIT_BYTES[0] <= kept <= SPLIT_BYTES[1] and (os.cpu_count() or 1) > 1:
                unpacked += _two_streams(spool, members, s.tool, out)
                continue
            if s.tool == "gzip":
                with _Pigz(out, LEVEL["gzip"]) as z:
                    unpacked += _newc(spool, members, z.write)
                continue
            c = _compressor(s.tool)
            unpacked += _newc(spool, members, out.write if c is None else (lambda b, c=c: out.write(c.compress(b))))
            if c:
                out.write(c.flush())
    return unpacked


def _two_streams(spool, members, tool: str, out) -> int:
    """The segment compressed as two streams at once, cut where a member begins: the kernel
    wants each stream to end between members (else "junk at the end of compressed archive");
    cpio's 4-byte alignment is counted from each stream's start, and a cut on a header keeps it."""
    buf, starts = bytearray(), []
    n = _newc(spool, members, buf.extend, starts)
    cut = min((o for o in starts if o > 0), key=lambda o: abs(o - n // 2), default=0)
    view = memoryview(buf)
    parts = [view[:cut], view[cut:]] if cut else [view]

    def pack(part) -> bytes:
        c = _compressor(tool)
        return c.compress(part) + c.flush()

    with ThreadPoolExecutor(len(parts)) as pool:
        for z in pool.map(pack, parts):
            out.write(z)
    view.release()
    return n


class _Pigz:
    """One gzip member written to ``out`` from what write() is given, deflated in GZIP_CHUNK
    chunks on a few threads: every chunk but the last ends on a byte boundary (Z_SYNC_FLUSH, no
    final block), so their concatenation is one deflate stream; the trailer's CRC-32 and ISIZE
    are the whole data's, which is what Xen's domain builder and the kernel check."""

    def __init__(self, out, level: int):
        self.out, self.level, self.buf, self.tail, self.crc, self.size = out, level, bytearray(), b"", 0, 0
        self.workers = max(1, min(4, os.cpu_count() or 1))
        self.pool, self.pending = ThreadPoolExecutor(self.workers), []

    def __enter__(self):
        self.out.write(GZIP_HEADER)
        return self

    def write(self, b) -> None:
        self.buf += b
        while len(self.buf) >= GZIP_CHUNK:
            self._submit(bytes(self.buf[:GZIP_CHUNK]), zlib.Z_SYNC_FLUSH)
            del self.buf[:GZIP_CHUNK]

    def _submit(self, chunk: bytes, flush: int) -> None:
        self.crc, self.size = zlib.crc32(chunk, self.crc), self.size + len(chunk)
        self.pending.append(self.pool.submit(self._deflate, chunk, self.tail, flush))
        self.tail = chunk[-32768:]
        while len(self.pending) > 2 * self.workers:  # in order, and only a few chunks held at once
            self.out.write(self.pending.pop(0).result())

    def _deflate(self, chunk: bytes, zdict: bytes, flush: int) -> bytes:
        c = zlib.compressobj(self.level, zlib.DEFLATED, -15, **({"zdict": zdict} if zdict else {}))
        return c.compress(chunk) + c.flush(flush)

    def __exit__(self, exc_type, *_):
        try:
            if exc_type is None:
                self._submit(bytes(self.buf), zlib.Z_FINISH)
                for f in self.pending:
                    self.out.write(f.result())
                self.out.write(self.crc.to_bytes(4, "little") + (self.size % 2**32).to_bytes(4, "little"))
        finally:
            self.pool.shutdown(cancel_futures=True)


def _compressor(tool: str | None):
    if tool is None:
        return None
    level = LEVEL[tool]
    # the kernel's xz decoder knows CRC32 and no check only, not xz's default CRC64
    return {"xz": lambda: lzma.LZMACompressor(lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level),
            "lzma": lambda: lzma.LZMACompressor(lzma.FORMAT_ALONE, preset=level),
            "bzip2": lambda: bz2.BZ2Compressor(level)}[tool]()


def _copy(f, out, n: int) -> None:
    while n > 0:
        b = f.read(min(n, CHUNK))
        if not b:
            raise OSError("the initramfs changed while it was slimmed")
        out.write(b)
        n -= len(b)


def _newc(spool, members, write, starts: list[int] | None = None) -> int:
    """The kept ``members`` as newc cpio through ``write``, trailers where they were, each
    archive padded to 512 bytes as cpio does; returns the bytes written.

    Hard links (one inode, nlink >= 2) are matched per archive by the kernel and carry their
    data once: on the last kept link, whichever link held it before, nlink their kept count."""
    groups: dict[tuple, list] = {}
    for m in members:
        if stat.S_ISREG(m.mode) and m.hdr[4] >= 2:
            groups.setdefault((m.archive, m.hdr[0], m.hdr[7], m.hdr[8]), []).append(m)
    holder, last = {}, {}
    for links in groups.values():
        kept = [m for m in links if m.keep]
        if kept:
            holder[id(kept[-1])] = max(links, key=lambda m: m.hdr[6])
            for m in kept:
                last[id(m)] = len(kept)
    n = 0
    for m in members:
        if not m.keep:
            continue
        hdr, data_from = list(m.hdr), m
        if id(m) in last:
            src = holder.get(id(m))
            hdr[4] = last[id(m)]
            hdr[6], hdr[12] = (src.hdr[6], src.hdr[12]) if src else (0, 0)
            data_from = src
        name = m.name + b"\0"
        hdr[11] = len(name)
        if starts is not None:
            starts.append(n)
        head = m.magic + b"".join(b"%08X" % v for v in hdr) + name
        head += b"\0" * (-len(head) % 4)
        write(head)
        n += len(head)
        size = hdr[6]
        if size:
            spool.f.seek(data_from.off)
            left = size
            while left:
                b = spool.f.read(min(left, CHUNK))
                write(b)
                left -= len(b)
            pad = b"\0" * (-size % 4)
            write(pad)
            n += size + len(pad)
        if m.name == b"TRAILER!!!":
            pad = b"\0" * (-n % 512)
            write(pad)
            n += len(pad)
    spool.f.seek(0, os.SEEK_END)
    return n
