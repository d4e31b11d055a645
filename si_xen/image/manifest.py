"""One image generation's entries as its walk found them: a manifest per image fingerprint,
shared by the VMs made from that generation, beside the other image facts (state_dir/images).
What an update or a drift report compares a VM with: rsync's quick check (type, mode, owner,
size, mtime), hard-link groups and symlink targets, never file contents.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .. import atomic

VERSION = 1
PREFIX = "manifest-"

# mode, uid, gid, size, mtime_ns, link, target. link: the hard-link group's number (1, 2, ...) when two
# or more of the tree's names share an inode, else 0 (a cached generation's files, also linked from
# the previous one, have nlink 2 alone). target: a symlink's (a readlink each, ~2 ms for the 926
# links of debian12), else "".
Facts = tuple[int, int, int, int, int, int, str]


@dataclass(frozen=True)
class Diff:
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.added) + len(self.changed) + len(self.removed)


def path_for(facts_dir: str, fp: str) -> str:
    return os.path.join(facts_dir, PREFIX + fp)


class Kept:
    """What a walk keeps for a manifest, at little cost to it: each directory's rows as it hashed
    them (marshal version 2, read only when a manifest is read), the names of each inode with
    nlink > 1, and the symlinks' names."""

    def __init__(self) -> None:
        self.dirs: list[bytes] = []
        self.linked: dict[tuple[int, int], list[str]] = {}
        self.links: list[str] = []

    def parts(self, root: str) -> tuple[list[bytes], list[list[str]], dict[str, str]]:
        """The stored form: the rows, the link groups of two or more names and the symlinks'
        targets (an OSError: the tree changed since its walk)."""
        return (self.dirs, [names for names in self.linked.values() if len(names) > 1],
                {p: os.readlink(root + p) for p in self.links})


def facts(root: str, kept: Kept) -> dict[str, Facts]:
    return _rows(*kept.parts(root))


def save(facts_dir: str, fp: str, root: str, kept: Kept) -> None:
    """Written once: a generation's manifest never changes (its fingerprint would). ~5 ms for
    the 14,000 entries of debian12: the rows are written as the walk hashed them. Makes
    ``facts_dir`` but not the state dir above it (FileNotFoundError): a VM's journal makes that,
    so a command refused before any VM was made here leaves no state, though its walk began."""
    path = path_for(facts_dir, fp)
    if os.path.exists(path):
        return
    with contextlib.suppress(FileExistsError):
        os.mkdir(facts_dir)
    atomic.write(path, marshal.dumps((VERSION, fp, *kept.parts(root))), 0o600)


def load(facts_dir: str, fp: str) -> dict[str, Facts] | None:
    """None when there is none, or it cannot be read (its readers then do without)."""
    try:
        with open(path_for(facts_dir, fp), "rb") as f:
            version, got, dirs, groups, targets = marshal.loads(f.read())
        if version != VERSION or got != fp or not isinstance(targets, dict):
            return None
        return _rows(dirs, groups, targets)
    except (OSError, EOFError, ValueError, TypeError, AttributeError):
        return None


def _rows(dirs: list[bytes], groups: list[list[str]], targets: dict[str, str]) -> dict[str, Facts]:
    group = {p: n for n, names in enumerate(groups, 1) for p in names}
    out = {}
    for chunk in dirs:
        for path, mode, uid, gid, size, mtime, _ in marshal.loads(chunk):
            out[path] = (mode, uid, gid, size, mtime, group.get(path, 0), targets.get(path, ""))
    return out


def diff(old: dict[str, Facts], new: dict[str, Facts]) -> Diff:
    """What became of ``old`` in ``new``: a directory changes with its type, mode or owner only
    (its size and mtime follow its entries); anything else with any fact or its link group."""
    group_old, group_new = _groups(old), _groups(new)
    common = old.keys() & new.keys()
    changed = {p for p in group_old.keys() | group_new.keys() if p in common and group_old.get(p) != group_new.get(p)}
    for p in [p for p in common if old[p] != new[p]]:
        a, b = old[p], new[p]
        if stat.S_ISDIR(a[0]) and stat.S_ISDIR(b[0]):
            if a[:3] != b[:3]:
                changed.add(p)
        elif a[:5] != b[:5] or a[6] != b[6]:  # else only the group's number: its names decided
            changed.add(p)
    return Diff(tuple(sorted(new.keys() - old.keys())), tuple(sorted(changed)), tuple(sorted(old.keys() - new.keys())))


def _groups(rows: dict[str, Facts]) -> dict[str, tuple[str, ...]]:
    """Each hard-linked name's group, as its names (group numbers differ between trees)."""
    groups: dict[int, list[str]] = {}
    for n, p in [(f[5], p) for p, f in rows.items() if f[5]]:
        groups.setdefault(n, []).append(p)
    return {p: names for names in map(tuple, map(sorted, groups.values())) for p in names}


def by_dir(paths: Iterable[str], depth: int = 2) -> list[tuple[str, int]]:
    """How many of ``paths`` each directory holds, cut ``depth`` deep (/var/log/apt/x: /var/log),
    most first."""
    counts = Counter("/".join(p.rsplit("/", 1)[0].split("/")[:depth + 1]) or "/" for p in paths)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def prune(facts_dir: str, keep: set[str], spare_seconds: float = 0) -> list[str]:
    """Removes the manifests of the fingerprints not in ``keep`` (those no VM record names), but
    not one saved in the last ``spare_seconds`` (a deploy or an update under way has walked its
    generation and not recorded it yet); returns their fingerprints."""
    import time

    young = time.time() - spare_seconds
    try:
        names = os.listdir(facts_dir)
    except FileNotFoundError:
        return []
    gone = []
    for name in names:
        if name.startswith(PREFIX) and name[len(PREFIX):] not in keep:
            path = os.path.join(facts_dir, name)
            try:
                if spare_seconds and os.stat(path).st_mtime > young:
                    continue
                os.unlink(path)
            except FileNotFoundError:
                continue
            gone.append(name[len(PREFIX):])
    return sorted(gone)
