"""One walk over an image: the space each target filesystem needs, a fingerprint that changes
when anything in the tree does (so a cached base disk is never stale), and for a deploy the
manifest of that generation (manifest.py), from the same stat calls."""

from __future__ import annotations

import hashlib
import marshal
import os
import stat
from dataclasses import dataclass

from .. import atomic
from ..errors import Fatal
from . import manifest

# Not copied into VMs (SystemImager's install-time exclusions), so not counted either.
SKIP_CONTENT = ("proc", "sys", "run", "tmp")
EXCLUDED_DIRS = ("/var/lib/nfs/rpc_pipefs",)  # and lost+found at any depth
EXCLUDED_FILES = ("/etc/system-id",)


COPIED = "the image changed while it was copied"


class ImageChanged(Fatal):
    """The image is not what a deploy was planned from (its walk after a copy, or the walk
    begun with a clone, found another): everything made was undone, and the caller plans again
    from ``survey``, the image as it is now (None: walk it). A caller that cannot (a batch,
    Ganeti) reports it as the Fatal it is."""

    def __init__(self, survey, why: str | None = None):
        super().__init__(why or "the image changed since its last walk",
                         "let whatever writes to the image (si_getimage, si_updateclient) finish, then run this again")
        self.survey = survey


@dataclass(frozen=True)
class Survey:
    fingerprint: str
    entries: tuple[tuple[str, int], ...]  # (guest path, bytes on disk); hard links once
    # What the install-time exclusions would leave out: real directories with content, and
    # files (guest paths). The one-pass copy masks these (storage/view.py).
    excluded: tuple[str, ...] = ()

    def usage(self, mountpoints: list[str]) -> dict[str, tuple[int, int]]:
        """Bytes and inodes per target mountpoint (the deepest mountpoint holding a path)."""
        others = sorted((m for m in mountpoints if m != "/"), key=len, reverse=True)
        prefixes = tuple(others)  # a cheap first test (C); most paths of an image are under / only
        out = {mp: [0, 0] for mp in mountpoints}
        out.setdefault("/", [0, 0])
        for path, size in self.entries:
            mp = "/"
            if prefixes and path.startswith(prefixes):
                mp = next((m for m in others if path == m or path.startswith(m + "/")), "/")
            acc = out[mp]
            acc[0] += size
            acc[1] += 1
        return {mp: (v[0], v[1]) for mp, v in out.items() if mp in mountpoints}


def survey(image: str, manifest_dir: str | None = None) -> Survey:
    """The image walked; with ``manifest_dir``, its manifest saved there too unless a walk of this
    generation did (image/manifest.py), by whoever walks: proc.Ahead's child, not the deploy."""
    kept = manifest.Kept() if manifest_dir else None
    s = walk(image, kept)
    if kept is not None:
        try:
            manifest.save(manifest_dir, s.fingerprint, image, kept)
        except OSError:
            pass  # no VM made here yet, the image changed since the walk (its next walk saves it), a full disk
    return s


def manifest_of(root: str) -> dict[str, manifest.Facts]:
    """Any tree's manifest (a VM's), walked as an image is (the same skips)."""
    kept = manifest.Kept()
    walk(root, kept)
    return manifest.facts(root, kept)


def walk(image: str, kept: manifest.Kept | None = None) -> Survey:
    """The survey of ``image``; ``kept`` (if given) gathers what its manifest needs on the way."""
    h = hashlib.sha256()
    entries: list[tuple[str, int]] = []
    seen: set[tuple[int, int]] = set()
    excluded: list[str] = []
    stack = [("", image)]
    while stack:
        rel, path = stack.pop()
        try:
            with os.scandir(path) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        rows = []  # one directory's stat facts, hashed at once (marshal: C speed; version 2 has no
        # back-references, so equal trees give equal bytes whatever the objects' identities)
        for e in items:
            erel = f"{rel}/{e.name}"
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            rows.append((erel, st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns, st.st_ino))
            if erel in EXCLUDED_FILES:
                excluded.append(erel)
            if kept is not None and stat.S_ISLNK(st.st_mode):
                kept.links.append(erel)
            if stat.S_ISDIR(st.st_mode):
                top = rel == "" and e.name in SKIP_CONTENT
                if (top or e.name == "lost+found" or erel in EXCLUDED_DIRS) and _has_content(e.path):
                    excluded.append(erel)
                if not top and e.name != "lost+found":
                    stack.append((erel, e.path))
            elif st.st_nlink > 1:  # hard links once
                if kept is not None:
                    kept.linked.setdefault((st.st_dev, st.st_ino), []).append(erel)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            entries.append((erel, st.st_blocks * 512))
        data = marshal.dumps(rows, 2)
        h.update(data)
        if kept is not None:
            kept.dirs.append(data)
    return Survey(h.hexdigest()[:16], tuple(entries), tuple(sorted(excluded)))


# The last walk of each image, so that a further VM can be planned and made while a new walk
# confirms that the image is unchanged (deploy's confirm step), instead of before.
def _walk_file(cache_dir: str, image: str) -> str:
    return os.path.join(cache_dir, f"walk-{hashlib.sha256(image.encode(errors='surrogateescape')).hexdigest()[:16]}")


def remembered(cache_dir: str | None, image: str) -> Survey | None:
    """The survey the last walk of ``image`` found, if any (marshal: ~2 ms for 14,000 entries)."""
    if not cache_dir:
        return None
    try:
        with open(_walk_file(cache_dir, image), "rb") as f:
            path, fingerprint, entries, excluded = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if path != image or not isinstance(fingerprint, str) or not isinstance(entries, tuple):
        return None
    return Survey(fingerprint, entries, excluded)


def remembered_fingerprints(cache_dir: str) -> set[str]:
    """The fingerprints of every image's last walk (a deploy under way may not have recorded its VM yet)."""
    try:
        names = [n for n in os.listdir(cache_dir) if n.startswith("walk-")]
    except FileNotFoundError:
        return set()
    out = set()
    for n in names:
        try:
            with open(os.path.join(cache_dir, n), "rb") as f:
                out.add(marshal.loads(f.read())[1])
        except (OSError, EOFError, ValueError, TypeError, IndexError):
            continue
    return out


def remember(cache_dir: str | None, image: str, s: Survey, over: str | None = None) -> None:
    """``s`` as the image's last walk; with ``over``, only in place of the walk of that generation
    (or none): an update's walk, older than a deploy's that came meanwhile, never replaces it."""
    if not cache_dir:
        return
    last = remembered(cache_dir, image)
    if last is not None and (last.fingerprint == s.fingerprint or over is not None and last.fingerprint != over):
        return
    os.makedirs(cache_dir, exist_ok=True)
    path = _walk_file(cache_dir, image)
    atomic.write(path, marshal.dumps((image, s.fingerprint, s.entries, s.excluded)))


def _has_content(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is not None
    except OSError:
        return False


def needed_mib(used_bytes: int, inodes: int) -> int:
    """Filesystem size that holds the data with room for metadata, journal and inodes."""
    data = used_bytes * 1.08 / 2**20 + 64
    inode_room = inodes * 1.2 * 16384 / 2**20  # ext4's default bytes-per-inode
    return int(max(data, inode_room)) + 1
