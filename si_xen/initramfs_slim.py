"""A Xen-sized initramfs made from the guest's own, without running anything of the guest.

The guest's initramfs is read as the kernel unpacks it (initramfs.unpack: the readers are
there) and written back with every member but the kernel modules and firmware a Xen PV/PVH
guest cannot use. Kept: the closure of xen-blkfront, xen-netfront, the root and /usr
filesystems' modules, and what the initramfs's own conf and scripts load by name, through
the initramfs's OWN depmod data (modules.dep, modules.softdep, the exact names of
modules.alias; a module in modules.builtin needs nothing). Early microcode and any segment
that loses nothing are copied byte for byte; a rewritten one gets the guest's compression.

The depmod files are kept as they are, though they name modules no longer there: kmod's
modprobe looks a module up in them and inserts it after the dependencies and softdeps they list
(tools/modprobe.c insmod -> libkmod-module.c kmod_module_probe_insert_module). A dependency that
fails to insert stops the load, so every one of a kept module's is kept; a softdep's failure is
ignored there, and they are kept too (ext4's crc32c). Looking up a dropped module fails as it
would had the initramfs never held it ("could not insert ...": udev's coldplug of hardware a
Xen guest lacks, which it ignores).
Not followed: module names in shell variables, udev modalias coldplug (hardware a Xen guest
does not have, its xen-* devices excepted), `install` commands of modprobe.d, insmod of paths.

An initramfs this cannot read or slim is used as it is: the Result says why, nothing raises.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import lzma
import os
import re
import stat
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from time import monotonic

from . import atomic, initramfs, proc

VERSION = 1  # bump when what slim() keeps or writes changes (the cache key)
XEN_DRIVERS = ("xen-blkfront", "xen-netfront")
# The guest's compression, faster than its mkinitramfs's: made once per image (cached), while the
# size it loses (gzip 6 -> 1: ~0.5 MB of 6 MB) costs Xen next to nothing to load.
LEVEL = {"gzip": 1, "xz": 0, "lzma": 0, "bzip2": 9, "zstd": 3, "lz4": 1, "lzop": 3}
# By the dom0's tool: zstd -T0 uses both cores; lz4 -l is the legacy frame, the kernel's only one.
TOOL_ARGS = {"zstd": ["-q", "-T0", "-c"], "lz4": ["-q", "-l", "-c"], "lzop": ["-q", "-c"]}
MODULE = re.compile(r"\.ko(\.(xz|zst|gz))?$")
MODDIR = re.compile(r"^((?:usr/)?lib/modules/[^/]+)/modules\.dep$")
FIRMWARE = ("lib/firmware", "usr/lib/firmware")
CHUNK = initramfs.CHUNK
# A rewritten gzip or xz segment of this many kept bytes is compressed as two streams on two threads
# (zlib and lzma let go of the GIL): the kernel, gzip -d and xz -d read concatenated streams as one.
SPLIT = ("gzip", "xz")
SPLIT_BYTES = (4 * 2**20, 512 * 2**20)  # below: not worth a thread; above: not held in memory
MAX_TEXT = 64 * 2**20  # depmod's files and the scripts read whole: the largest modules.alias is ~1 MB


class _AsIs(Exception):
    """The initramfs is kept as it is: the message says why."""


@dataclass(frozen=True)
class Result:
    path: str | None  # the slim initramfs; None: boot the guest's own
    reason: str  # why the guest's own is used as it is ("" when slimmed)
    size_before: int  # bytes of the file
    size_after: int
    unpacked_before: int  # bytes the guest unpacks
    unpacked_after: int
    kept: tuple[str, ...] = ()  # modules kept, by name (xen-blkfront)
    builtin: tuple[str, ...] = ()  # wanted modules the kernel has built in
    missing: tuple[str, ...] = ()  # wanted modules neither built in nor in the initramfs
    compression: str | None = None
    seconds: float = 0.0
    cached: bool = False

    @property
    def slimmed(self) -> bool:
        return self.path is not None


def _name(mod: str) -> str:
    """kmod's module name: xen-blkfront.ko.xz -> xen_blkfront."""
    return os.path.basename(mod).split(".ko")[0].replace("-", "_")


def _shown(names) -> tuple[str, ...]:
    return tuple(sorted(n.replace("_", "-") for n in names))


@dataclass(eq=False)
class _Member:
    seg: int
    archive: int  # within its segment: hard links are matched per archive, as the kernel does
    hdr: list[int]  # the 13 newc fields
    magic: bytes
    name: bytes
    off: int  # of its data in the spool
    keep: bool = True

    @property
    def path(self) -> str:
        return self.name.decode(errors="replace").lstrip("/").removeprefix("./")

    @property
    def mode(self) -> int:
        return self.hdr[1]


class _Spool:
    """initramfs.unpack's sink: every member's header in memory, its data in a temp file."""

    def __init__(self, f):
        self.f, self.members, self.seg, self.archive = f, [], -1, 0

    def segment(self, tool):
        self.seg, self.archive = self.seg + 1, 0

    def __call__(self, hdr: bytes, name: bytes, r, size: int) -> None:
        fields = [int(hdr[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        self.members.append(_Member(self.seg, self.archive, fields, hdr[:6], name, self.f.tell()))
        while size:
            chunk = r.read(min(size, CHUNK))
            if not chunk:
                raise initramfs.Unreadable("is truncated: a cpio archive ends inside a member")
            self.f.write(chunk)
            size -= len(chunk)
        if name == b"TRAILER!!!":
            self.archive += 1

    def data(self, m: _Member) -> bytes:
        self.f.seek(m.off)
        out = self.f.read(m.hdr[6])
        self.f.seek(0, os.SEEK_END)
        return out


def slim(src: str, dst: str, fstypes=("ext4",), extra=()) -> Result:
    """Write the slim initramfs of ``src`` to ``dst`` (whole or not at all); ``fstypes``: the
    root's and /usr's filesystems, ``extra``: more modules to keep by name. ``src`` is a host
    path the caller resolved inside the guest (Guest.path: no symlink followed out of it)."""
    t0 = monotonic()
    size = os.path.getsize(src)

    def as_is(reason: str, unpacked: int = 0) -> Result:
        return Result(None, reason, size, size, unpacked, unpacked, seconds=monotonic() - t0)

    with tempfile.TemporaryFile(dir=os.path.dirname(os.path.abspath(dst))) as spoolf:
        spool = _Spool(spoolf)
        try:
            scanned, segments = initramfs.unpack(src, spool)
        except initramfs.Unreadable as e:
            return as_is(str(e))
        ms = [m for m in spool.members if m.name != b"TRAILER!!!"]
        modules = [m for m in ms if stat.S_ISREG(m.mode) and MODULE.search(m.path)]
        if not modules:
            return as_is("holds no kernel modules: nothing to leave out", scanned.unpacked)
        dirs = {MODDIR.match(m.path).group(1): m for m in ms if MODDIR.match(m.path) and stat.S_ISREG(m.mode)}
        stray = [m.path for m in modules if not any(m.path.startswith(d + "/") for d in dirs)]
        if stray:
            where = os.path.dirname(stray[0])
            return as_is(f"has kernel modules without a modules.dep for them ({where}): their dependencies "
                         "are unknown", scanned.unpacked)
        keep, builtin, missing = set(), set(), set()
        try:
            wanted = {_name(x) for x in extra} | _loaded(ms, spool)
            for d in dirs:
                k, b, miss = _closure(d, ms, spool, wanted, fstypes)
                keep |= k
                builtin |= b
                missing |= miss
        except _AsIs as e:
            return as_is(str(e), scanned.unpacked)
        kept_names, is_module = set(), {id(m) for m in modules}
        for m in ms:
            if id(m) in is_module:
                m.keep = m.path in keep
                if m.keep:
                    kept_names.add(_name(m.path))
            elif any(m.path == f or m.path.startswith(f + "/") for f in FIRMWARE):
                m.keep = False
        _prune_dirs(ms, dirs)
        if all(m.keep for m in ms):
            return as_is("holds only what a Xen guest loads: nothing to leave out", scanned.unpacked)
        unpacked_after = _write(src, dst, spool, segments)
    missing -= kept_names
    return Result(dst, "", size, os.path.getsize(dst), scanned.unpacked, unpacked_after, _shown(kept_names),
                  _shown(builtin), _shown(missing), next((s.tool for s in segments if s.tool), None),
                  monotonic() - t0)


def _lines(spool: _Spool, m: _Member) -> list[str]:
    if m.hdr[6] > MAX_TEXT:
        raise _AsIs(f"has a {m.path} of {m.hdr[6] // 2**20} MiB: not one depmod or initramfs-tools writes")
    return spool.data(m).decode(errors="replace").splitlines()


def _closure(d: str, ms, spool: _Spool, wanted: set[str], fstypes) -> tuple[set[str], set[str], set[str]]:
    """(archive paths of the modules to keep, wanted names built in, wanted names nowhere) for
    the module directory ``d``, from its own depmod files."""
    files = {m.path: m for m in ms if m.path.startswith(d + "/") and stat.S_ISREG(m.mode)}
    deps: dict[str, list[str]] = {}  # name -> [relative path of itself, then its dependencies]
    for line in _lines(spool, files[d + "/modules.dep"]):
        head, sep, tail = line.partition(":")
        if sep:
            rel = [p.split(f"/{os.path.basename(d)}/", 1)[-1] if p.startswith("/") else p
                   for p in (head.strip(), *tail.split())]
            deps[_name(rel[0])] = rel
    builtin = {_name(x) for x in _lines(spool, files[f"{d}/modules.builtin"])} if f"{d}/modules.builtin" in files else set()
    alias: dict[str, set[str]] = {}
    if f"{d}/modules.alias" in files:
        for line in _lines(spool, files[f"{d}/modules.alias"]):
            w = line.split()
            if len(w) == 3 and w[0] == "alias" and not set(w[1]) & set("*?["):
                alias.setdefault(w[1].replace("-", "_"), set()).add(_name(w[2]))
    soft: dict[str, set[str]] = {}
    confs = [m for p, m in files.items() if p == f"{d}/modules.softdep"]
    confs += [m for m in ms if re.match(r"^(usr/)?(lib|etc)/modprobe\.d/[^/]+\.conf$", m.path) and stat.S_ISREG(m.mode)]
    for m in confs:
        for line in _lines(spool, m):
            w = line.split()
            if len(w) > 2 and w[0] == "softdep":
                soft.setdefault(_name(w[1]), set()).update(_name(x) for x in w[2:] if not x.endswith(":"))

    def resolve(n: str) -> set[str]:
        n = n.replace("-", "_")
        if n in builtin or n in deps:
            return {n}
        return alias.get(n, set())

    required = {_name(x) for x in XEN_DRIVERS}
    for t in fstypes:
        required |= resolve(t) | resolve(f"fs-{t}") or {t}
    keep, seen, todo = set(), set(), [x for r in wanted | required for x in (resolve(r) or {r})]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        for s in soft.get(n, ()):
            todo.extend(resolve(s))
        if n in deps:
            keep.update(f"{d}/{rel}" for rel in deps[n])
            todo.extend(_name(rel) for rel in deps[n][1:])
    keep &= set(files)
    present = {_name(p) for p in keep}
    return keep, required & builtin, {n for n in required if n not in builtin and n not in present}


MODPROBE = re.compile(r"(?:^|[\s;&|(`])(?:/usr)?(?:/s?bin/)?modprobe\s+([^;&|<>`)#\n]*)")
OPTARG = {"-d", "-C", "-S", "-w", "--dirname", "--config", "--set-version", "--wait"}
PLAIN = re.compile(r"[A-Za-z0-9_.-]+")


def _loaded(ms, spool: _Spool) -> set[str]:
    """The modules the initramfs's own conf and scripts load by name."""
    out: set[str] = set()
    for m in ms:
        if not stat.S_ISREG(m.mode):
            continue
        p = m.path
        if p in ("conf/modules", "etc/modules") or re.match(r"^(usr/)?(lib|etc)/modules-load\.d/[^/]+\.conf$", p):
            for line in _lines(spool, m):
                w = line.split()
                if w and not w[0].startswith(("#", ";")) and PLAIN.fullmatch(w[0]):
                    out.add(_name(w[0]))
        elif p == "init" or p.startswith(("scripts/", "usr/lib/dracut/hooks/")):
            if m.hdr[6] > 2**20:
                continue  # a script is not a megabyte: a binary
            text = spool.data(m).decode(errors="replace").replace("\\\n", " ")
            for args in MODPROBE.findall("\n".join(x for x in text.splitlines() if not x.lstrip().startswith("#"))):
                out |= _modprobe_names(args.split())
    return out


def _modprobe_names(words: list[str]) -> set[str]:
    """The modules ``modprobe WORDS`` loads, as far as they are written out: without -a only
    the first word is a module (the rest are its parameters)."""
    opts, args, it = set(), [], iter(words)
    for w in it:
        if w in OPTARG:
            next(it, None)
        elif w.startswith("--"):
            opts.add(w)
        elif w.startswith("-") and len(w) > 1:
            opts.update("-" + c for c in w[1:])
        else:
            args.append(w)
    if opts & {"-r", "--remove", "-R", "--resolve-alias", "-D", "--show-depends", "-n", "--dry-run"}:
        return set()
    if not opts & {"-a", "--all"}:
        args = args[:1]
    return {_name(a) for a in args if PLAIN.fullmatch(a)}


def _prune_dirs(ms, dirs) -> None:
    """Directories of the module trees that hold nothing kept any more go too."""
    needed = set()
    for m in ms:
        if m.keep and not stat.S_ISDIR(m.mode):
            p = os.path.dirname(m.path)
            while p and p not in needed:
                needed.add(p)
                p = os.path.dirname(p)
    for m in ms:
        if stat.S_ISDIR(m.mode) and any(m.path.startswith(d + "/kernel") for d in dirs) and m.path not in needed:
            m.keep = False


def _write(src: str, dst: str, spool: _Spool, segments) -> int:
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
            c = _compressor(s.tool)
            unpacked += _newc(spool, members, out.write if c is None else (lambda b, c=c: out.write(c.compress(b))))
            if c:
                out.write(c.flush())
    return unpacked


def _two_streams(spool: _Spool, members, tool: str, out) -> int:
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


def _compressor(tool: str | None):
    if tool is None:
        return None
    level = LEVEL[tool]
    return {"gzip": lambda: zlib.compressobj(level, zlib.DEFLATED, 31),
            # the kernel's xz decoder knows CRC32 and no check only, not xz's default CRC64
            "xz": lambda: lzma.LZMACompressor(lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=level),
            "lzma": lambda: lzma.LZMACompressor(lzma.FORMAT_ALONE, preset=level),
            "bzip2": lambda: bz2.BZ2Compressor(level)}[tool]()


def _copy(f, out, n: int) -> None:
    while n > 0:
        b = f.read(min(n, CHUNK))
        if not b:
            raise OSError("the initramfs changed while it was slimmed")
        out.write(b)
        n -= len(b)


def _newc(spool: _Spool, members, write, starts: list[int] | None = None) -> int:
    """The kept ``members`` as newc cpio through ``write``, trailers where they were, each
    archive padded to 512 bytes as cpio does; returns the bytes written.

    Hard links (one inode, nlink >= 2) are matched per archive by the kernel and carry their
    data once: on the last kept link, whichever link held it before, nlink their kept count."""
    groups: dict[tuple, list[_Member]] = {}
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


# The cache: the slim file belongs to the image's base, made once per initramfs and parameters.

def _cache_name(src: str, fstypes, extra) -> str:
    params = hashlib.sha256(repr((VERSION, sorted(fstypes), sorted(extra), LEVEL)).encode()).hexdigest()[:8]
    return os.path.join(initramfs.cache_dir(), f"{initramfs._key(src)}-slim-{params}")


def slim_cached(src: str, fstypes=("ext4",), extra=()) -> Result:
    """slim() of ``src`` kept in the cache by the file's identity (as scan_cached): further VMs
    of the image get the same file, and the same verdict when it is used as it is."""
    t0 = monotonic()
    base = _cache_name(src, fstypes, extra)
    try:
        with open(base + ".json") as f:
            d = json.load(f)
        r = Result(**{**d, **{k: tuple(d[k]) for k in ("kept", "builtin", "missing")}})
        if r.path is None or os.path.isfile(r.path):
            return Result(**{**asdict(r), "seconds": monotonic() - t0, "cached": True})
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        os.makedirs(os.path.dirname(base), exist_ok=True)
        r = slim(src, base + ".img", fstypes, extra)
    except OSError as e:  # the cache's filesystem full or read-only: the guest's own still boots
        size = os.path.getsize(src)
        return Result(None, f"could not be slimmed into {os.path.dirname(base)}: {e.strerror or e}", size, size, 0, 0,
                      seconds=monotonic() - t0)
    try:
        atomic.write(base + ".json", json.dumps(asdict(r)))
    except OSError:
        pass  # a cache we cannot write only costs time
    return r
