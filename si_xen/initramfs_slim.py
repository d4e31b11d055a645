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

import hashlib
import json
import os
import re
import stat
import tempfile
from dataclasses import asdict, dataclass
from time import monotonic

from . import atomic, initramfs
from .initramfs_write import LEVEL  # noqa: F401 (LEVEL: the bench sets it here)
from .initramfs_write import write as _write

VERSION = 3  # bump when what slim() keeps or writes changes (the cache key)
XEN_DRIVERS = ("xen-blkfront", "xen-netfront")
MODULE = re.compile(r"\.ko(\.(xz|zst|gz))?$")
MODDIR = re.compile(r"^((?:usr/)?lib/modules/[^/]+)/modules\.dep$")
FIRMWARE = ("lib/firmware", "usr/lib/firmware")
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

    @classmethod
    def from_json(cls, d: dict) -> Result:
        """As asdict() wrote it (lists for the tuples); TypeError or KeyError if it is not one."""
        return cls(**{**d, **{k: tuple(d[k]) for k in ("kept", "builtin", "missing")}})


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
            chunk = r.read(min(size, initramfs.CHUNK))
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


# The cache: the slim file belongs to the image's base, made once per initramfs and parameters.

def _cache_name(src: str, fstypes, extra) -> str:
    """Keyed by the whole file's sha256 (~30 ms for 35 MB), not its identity as initramfs.scan_cached
    is: the slim file boots VMs of every image whose initramfs has the key, so an image must not
    be able to fake another's (same size, mtime and ends) and have its own file boot the other's VMs."""
    with open(src, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:32]
    return os.path.join(initramfs.cache_dir(), f"{digest}-slim-{params(fstypes, extra)}")


def params(fstypes, extra=()) -> str:
    """What a slim file is made with besides its source (VERSION, filesystems, modules, levels), as
    a short hash: it names the cached file, and keys what a caller keeps of a Result (planner's boot
    facts) so that a new VERSION never boots an old file."""
    return hashlib.sha256(repr((VERSION, sorted(fstypes), sorted(extra), LEVEL)).encode()).hexdigest()[:8]


def slim_cached(src: str, fstypes=("ext4",), extra=()) -> Result:
    """slim() of ``src`` kept in the cache by the file's identity (as scan_cached): further VMs
    of the image get the same file, and the same verdict when it is used as it is."""
    t0 = monotonic()
    base = _cache_name(src, fstypes, extra)
    try:
        with open(base + ".json") as f:
            d = json.load(f)
        r = Result.from_json(d)
        if r.path is None or os.path.isfile(r.path):
            used(base + ".img")
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


def used(path: str) -> None:
    """A cache entry (its .img) found and booted: its times say so (initramfs_prune keeps what was
    used lately), whether found by its digest or by the boot facts of the image's generation."""
    base = path.removesuffix(".img")
    for p in (base + ".img", base + ".json"):
        try:
            os.utime(p)
        except OSError:
            pass  # a read-only cache: it is only pruned sooner
