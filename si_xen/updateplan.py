"""What an update does to a VM's tree (issue 28 §3), planned from three manifests: the generation
the VM was made from (``old``), the one it goes to (``new``) and the VM as walked (``vm``). Pure:
no processes, no filesystem. The transfer is then an rsync of exactly the listed names, not a
whole-tree rsync (a dry run of one over 14,000 entries alone costs ~0.5 s).

Rules, per path, as SystemImager's image pass (``rsync -a --delete --exclude=...``) would leave it:
an image entry missing or different in the VM is fetched (local edits of image files revert); an
entry only in the VM is deleted if the image removed it, else kept as local data (``/home``,
``/var/lib/app``). Excluded and identity paths are never touched; si-xen's own paths (the fixups')
only when the image changed them, the fixups then run again.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from .image import manifest

DELETES = ("image", "none", "local")
BLOCK = 4096  # the room check rounds each file up to a block and counts a block per new directory

# -aHAXS --numeric-ids --no-inc-recursive, as populate.copy (the deploy) copies; -a brings no -r
# with --files-from, so each name listed is sent alone (a directory: itself, not its contents).
# The plan compares mtimes to the nanosecond: so must rsync (by default whole seconds), or a name
# listed for its nanoseconds alone is skipped, or keeps the time it was made at (a link made in
# the second its image's was), and the next plan lists it again.
RSYNC = ("rsync", "-aHAXS", "--numeric-ids", "--no-inc-recursive")
NANOSECONDS = "--modify-window=-1"


@dataclass(frozen=True)
class Changes:
    delete: tuple[str, ...] = ()      # deepest first
    fetch: tuple[str, ...] = ()       # sorted; directories listed themselves; every name of a changed hard-link group
    kept_local: tuple[str, ...] = ()  # in the VM only, kept (with their dirs)
    rerun: tuple[str, ...] = ()       # fixup names to rerun, in the order given by `fixups`
    fetch_bytes: int = 0              # sizes of the regular files fetched (a hard-link group once)


def _kind(f: manifest.Facts) -> int:
    return stat.S_IFMT(f[0])


def _differs(a: manifest.Facts, b: manifest.Facts) -> bool:
    """rsync's quick check: type, mode, owner, size, mtime and a link's target; a directory by
    type, mode and owner only (its size and mtime follow its entries). Link groups apart."""
    if stat.S_ISDIR(a[0]) and stat.S_ISDIR(b[0]):
        return a[:3] != b[:3]
    return a[:4] != b[:4] or a[6] != b[6] or not _same_time(a[4], b[4])


def _same_time(a: int, b: int) -> bool:
    """Equal, or one is a whole second and the other falls in it: mke2fs -d (the deploy's one-pass
    copy) keeps no nanoseconds, and its ~300 install-time files would be fetched again for nothing."""
    return a == b or ((a % 10**9 == 0 or b % 10**9 == 0) and a // 10**9 == b // 10**9)


def _owner(owned: dict[str, tuple[str, ...]]) -> Callable[[str], bool]:
    """Whether si-xen wrote a path: a name, or a tree given as a prefix (``/usr/lib/modules/6.1/``)."""
    names = {p for paths in owned.values() for p in paths if not p.endswith("/")}
    trees = tuple({p for paths in owned.values() for p in paths if p.endswith("/")})
    return lambda p: p in names or (p + "/").startswith(trees)


def _classes(new: dict, vm: dict, classify) -> Callable[[str], str | None]:
    """Each path's class, asked only of the paths that differ (a few hundred of ~14,000: the
    patterns cost ~2.5 us a path); an excluded or identity directory covers what it holds, as
    rsync does not descend into one."""
    memo: dict[str, str | None] = {"": None}

    def cls(p: str) -> str | None:
        if p not in memo:
            c = cls(p.rpartition("/")[0])
            if c is None:
                f = new.get(p) or vm.get(p)
                c = classify(p, stat.S_ISDIR(f[0])) if f is not None else None
            memo[p] = c
        return memo[p]
    return cls


def plan_update(old: dict | None, new: dict, vm: dict, classify, owned: dict[str, tuple[str, ...]],
                watches: dict[str, Callable[[str], bool]], fixups: Sequence[str], delete: str = "image",
                always: Sequence[str] = ("systemimager",)) -> Changes:
    """What to delete, fetch and keep so that ``vm`` becomes ``new``, and which fixups to rerun.
    ``old`` None (a VM made by an older si-xen, or its manifest lost): two-way, nothing deleted
    but with ``delete="local"`` (the caller warns). ``delete="none"`` (--no-delete) deletes only
    what a changed entry replaces (a file where the image now has a directory), as rsync would."""
    if delete not in DELETES:
        raise ValueError(f"delete must be one of {DELETES}, not {delete!r}")
    paths = sorted(new.keys() | vm.keys())
    cls = _classes(new, vm, classify)
    is_owned = _owner(owned)
    group_old = manifest._groups(old) if old is not None else {}
    group_new, group_vm = manifest._groups(new), manifest._groups(vm)

    def image_changed(p: str) -> bool:  # between old and new; without old, every path
        if old is None or (p in old) != (p in new):
            return True
        return p in new and (_differs(old[p], new[p]) or _kind(old[p]) != _kind(new[p])
                             or group_old.get(p) != group_new.get(p))

    def untouchable(p: str) -> bool:
        return cls(p) is not None or (is_owned(p) and not image_changed(p))

    fetch: set[str] = set()
    gone: set[str] = set()
    kept: set[str] = set()

    def get(p: str) -> None:
        fetch.add(p)
        v = vm.get(p)
        # a type change is a delete then a fetch; so is a name the VM shares an inode with one the
        # image does not (rsync, finding it up to date, would leave the two linked)
        if v is not None and (_kind(v) != _kind(new[p]) or set(group_vm.get(p, ())) - set(group_new.get(p, ()))):
            gone.add(p)

    def behind(p: str, n: manifest.Facts, v: manifest.Facts) -> bool:
        """The VM holds the old generation's file, the image changed it within the same second
        (mke2fs -d left the VM whole seconds, that alone cannot tell the two apart)."""
        o = old.get(p) if old is not None else None
        return o is not None and not stat.S_ISDIR(n[0]) and o[4] != n[4] and not _differs(v, o)

    for p in paths:
        n, v = new.get(p), vm.get(p)
        if n is not None and v is not None and _kind(v) == _kind(n) and not _differs(v, n) \
                and group_vm.get(p) == group_new.get(p) and not behind(p, n, v):
            continue  # the same: whatever its class, nothing to do
        if cls(p) is not None:
            continue
        if n is not None:
            if not untouchable(p):
                get(p)
        elif not (is_owned(p) and not image_changed(p)):
            if delete == "local" or (delete == "image" and old is not None and p in old):
                gone.add(p)
            else:
                kept.add(p)
    # a hard-link group goes whole, or rsync would split it (the names of one inode share their
    # facts and group, so the checks above list them all already: a safety net)
    for p in list(fetch):
        for m in group_new.get(p, ()):
            if m not in fetch and not untouchable(m):
                get(m)
    # a directory still holding anything that stays is kept (and what would have replaced it waits)
    for q in [q for q in vm if q not in gone]:
        d = q.rpartition("/")[0]
        while d in gone:
            gone.discard(d)
            fetch.discard(d)
            kept.add(d)
            d = d.rpartition("/")[0]
    # never write through what stays in the VM where the image has a directory (a link a fixup
    # made, say): rsync would follow it, maybe out of the guest
    fetch -= {p for p in fetch if _through(p, vm, gone)}
    touched = fetch | gone
    watched = _rerun(touched, owned, watches, fixups, always)
    return Changes(tuple(sorted(gone, key=lambda p: (-p.count("/"), p))), tuple(sorted(fetch)),
                   tuple(sorted(kept)), watched, _bytes(fetch, new, group_new))


def _through(p: str, vm: dict, gone: set[str]) -> bool:
    d = p.rpartition("/")[0]
    while d:
        f = vm.get(d)
        if f is not None and not stat.S_ISDIR(f[0]) and d not in gone:
            return True
        d = d.rpartition("/")[0]
    return False


def _rerun(touched: set[str], owned, watches, fixups: Sequence[str], always: Sequence[str]) -> tuple[str, ...]:
    """The fixups whose paths (written at deploy, or watched) the update touched, and ``always``."""
    out = []
    for f in fixups:
        mine = _owner({f: tuple(owned.get(f, ()))})
        watch = watches.get(f)
        if f in always or any(mine(p) or (watch is not None and watch(p)) for p in touched):
            out.append(f)
    return tuple(out)


def _bytes(fetch: Iterable[str], new: dict, groups: dict) -> int:
    seen: set[tuple[str, ...]] = set()
    total = 0
    for p in fetch:
        if stat.S_ISREG(new[p][0]):
            g = groups.get(p)
            if g is None or g not in seen:
                if g is not None:
                    seen.add(g)
                total += new[p][3]
    return total


def files_from(paths: Iterable[str]) -> bytes:
    """The names for ``rsync --files-from=LIST --from0``: relative to the roots, NUL-ended
    (a name may hold a newline); bytes as the walk found them (surrogateescape)."""
    out = []
    for p in paths:
        rel = p.lstrip("/")
        if not rel:  # "." would send the root's contents
            raise ValueError("the root itself cannot be listed")
        out.append(os.fsencode(rel) + b"\0")
    return b"".join(out)


def rsync_argv(src_root: str, dst_root: str, list_file: str) -> list[str]:
    """The transfer: the deploy's flags, exactly the names listed, no -r and no --delete (the
    deletions were made before, by the plan)."""
    return [*RSYNC, NANOSECONDS, f"--files-from={list_file}", "--from0", src_root.rstrip("/") + "/", dst_root.rstrip("/") + "/"]


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def free_needed(changes: Changes, new: dict, vm: dict) -> int:
    """The free space the VM's filesystem needs for ``changes`` (the caller compares it with
    statvfs): the deletions run first and free theirs; then each fetched file is written beside
    the one it replaces and renamed over it, so a file that grows needs its growth and, for a
    moment, the larger of the two copies. Counted in 4 KiB blocks, a hard-link group once; an
    over-estimate, never under (sparse files aside)."""
    group_new, group_vm = manifest._groups(new), manifest._groups(vm)
    gone = set(changes.delete)
    freed, done = 0, set()
    for p in gone:
        f = vm.get(p)
        if f is None or not stat.S_ISREG(f[0]):
            continue
        g = group_vm.get(p, (p,))
        if g not in done and gone.issuperset(g):  # the data goes with its last name
            done.add(g)
            freed += _blocks(f[3])
    grow, peak, done = 0, 0, set()
    for p in changes.fetch:
        n = new[p]
        if stat.S_ISDIR(n[0]):
            grow += BLOCK if p not in vm or p in gone else 0
            continue
        if not stat.S_ISREG(n[0]):
            continue
        g = group_new.get(p, (p,))
        if g in done:
            continue
        done.add(g)
        v = None if p in gone else vm.get(p)
        was = _blocks(v[3]) if v is not None and stat.S_ISREG(v[0]) and p not in group_vm else 0
        grow += max(0, _blocks(n[3]) - was)
        peak = max(peak, min(_blocks(n[3]), was))
    return max(0, grow + peak - freed)


def needed_by_mount(changes: Changes, new: dict, vm: dict, mountpoints: list[str]) -> dict[str, int]:
    """free_needed for each of the VM's filesystems (its mount points; a path counts on the deepest
    that holds it): a /var of its own fills up apart from /."""
    def where(p: str) -> str:
        return max((m for m in mountpoints if p == m or p.startswith(m.rstrip("/") + "/")), key=len, default="/")

    out = {}
    for mp in mountpoints:
        part = replace(changes, delete=tuple(p for p in changes.delete if where(p) == mp),
                       fetch=tuple(p for p in changes.fetch if where(p) == mp))
        out[mp] = free_needed(part, new, vm)
    return out
