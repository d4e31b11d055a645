"""si_lsxenvm --drift: how far each VM is from the image generation it was made (or last updated)
from, and how far that image has moved on since (issue 28, design §2).

Expected = the generation's manifest (image/manifest.py) with si-xen's own writes (the record's
``owned_facts``) laid over it; the VM = its filesystems' walk. Each differing path gets a class:
``identity`` and ``excluded`` (the pluggable ``classify``, excludes.py's rules), ``owned`` (a
path si-xen wrote, changed since), ``image`` (an image file edited or removed in the VM) or
``local`` (only in the VM). rsync's quick check (type, mode, owner, size, mtime), no checksums.

The VM side is vmread.py's (its disks read-only in a mount namespace of its own). The image side
(opened as si_mkxenvm would open it now, never pulled) is walked meanwhile in a forked child.
"""

from __future__ import annotations

import glob
import os
import stat
import time
from dataclasses import dataclass, field

from . import proc, vmread
from .errors import Fatal
from .image import manifest, survey
from .locks import LockBusy, exclusive
from .vmread import Classify, read_mode, read_vm

CLASSES = ("image", "local", "owned", "identity", "excluded")


def install_excluded(path: str, is_dir: bool) -> str | None:
    """The install-time exclusions (populate.EXCLUDES): never copied, so never drift. Always
    asked after ``classify``, which may say more (excludes.py: updateclient's, identity)."""
    parts = path.split("/")
    if "lost+found" in parts or path in survey.EXCLUDED_FILES:
        return "excluded"
    if len(parts) > 2 and parts[1] in survey.SKIP_CONTENT:
        return "excluded"
    if any(path.startswith(d + "/") for d in survey.EXCLUDED_DIRS):
        return "excluded"
    return None


@dataclass
class VmDrift:
    name: str
    image: str
    state: str
    read: str = ""  # offline | copy, snapshot (private, replayed: a running or uncleanly stopped VM's disks) | live
    seconds: float = 0.0
    generation: dict = field(default_factory=dict)
    image_now: dict | None = None
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    classes: dict[str, str] = field(default_factory=dict)  # path -> class, for every differing path
    notes: list[str] = field(default_factory=list)
    busy: int | None = None  # the pid holding the VM's lock (-1: unknown)

    def by_class(self) -> dict[str, int]:
        out = dict.fromkeys(CLASSES, 0)
        for c in self.classes.values():
            out[c] += 1
        return out

    def by_dir(self) -> list[dict]:
        """Per directory (two deep) and class: added, changed, removed; most first."""
        rows: dict[tuple[str, str], list[int]] = {}
        for i, paths in enumerate((self.added, self.changed, self.removed)):
            for p in paths:
                d = "/".join(p.rsplit("/", 1)[0].split("/")[:3]) or "/"
                rows.setdefault((d, self.classes[p]), [0, 0, 0])[i] += 1
        order = sorted(rows.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        return [{"dir": d, "class": c, "added": a, "changed": ch, "removed": r} for (d, c), (a, ch, r) in order]

    def to_json(self, paths: bool = False) -> dict:
        out = {"name": self.name, "image": self.image, "state": self.state, "read": self.read,
               "seconds": round(self.seconds, 2), "generation": self.generation, "image_now": self.image_now,
               "notes": self.notes}
        if self.busy is not None:
            out["busy"] = self.busy
            return out
        out["vm"] = {"added": len(self.added), "changed": len(self.changed), "removed": len(self.removed),
                     "by_class": self.by_class(), "by_dir": self.by_dir(),
                     "paths": {"added": list(self.added), "changed": list(self.changed), "removed": list(self.removed)}
                     if paths else {"added": [], "changed": [], "removed": []}}
        return out

    def text(self) -> list[str]:
        g = self.generation
        lines = [f"{self.name}: image {self.image}, {self.state}" + (f", read {self.read}" if self.read else "")]
        if self.busy is not None:
            return [lines[0] + f": busy (pid {self.busy if self.busy > 0 else '?'})", *self.notes]
        lines.append(f"  generation {g.get('fingerprint') or '?'} (image time {g.get('image_time') or '?'}), "
                     f"{g.get('how', 'made')} {g.get('since') or '?'}")
        now = self.image_now
        if now and now.get("moved_on"):
            lines.append(f"  image moved on to {now['fingerprint']}: +{now['added']} ~{now['changed']} -{now['removed']}")
        elif now:
            lines.append("  image unchanged since")
        counts = ", ".join(f"{c} {n}" for c, n in self.by_class().items() if n)
        lines.append(f"  VM: +{len(self.added)} ~{len(self.changed)} -{len(self.removed)}" + (f" ({counts})" if counts else ""))
        for row in self.by_dir()[:10]:
            lines.append(f"    {row['dir']:<28} {row['class']:<9} +{row['added']} ~{row['changed']} -{row['removed']}")
        lines += [f"  {n}" for n in self.notes]
        return lines


# -- comparing ------------------------------------------------------------------------------

def owned_prefixes(rec) -> tuple[str, ...]:
    """Trees si-xen wrote whole (kernel modules: ``/lib/modules/6.1.0/``)."""
    return tuple(p for paths in rec.owned.values() for p in paths if p.endswith("/"))


def compare(expected: dict, owned_facts: dict, vm: dict, prefixes: tuple[str, ...] = (),
            classify: Classify | None = None) -> tuple[manifest.Diff, dict[str, str]]:
    """The VM's differences from ``expected`` (a manifest) once si-xen's writes are laid over it,
    each with its class. An owned path compares by its recorded facts (mode uid gid size mtime):
    its link group and symlink target were not recorded. mtimes compare in whole seconds:
    mke2fs -d (the one-pass copy) drops the nanoseconds (e2fsprogs 1.47), as rsync's quick check
    does on a filesystem without them."""
    exp, vm = _seconds(expected), _seconds(vm)
    for p, f in owned_facts.items():
        if p.endswith("/"):
            continue
        if f is None:
            exp.pop(p, None)
        else:
            have = vm.get(p)
            exp[p] = (*f[:4], f[4] // 1_000_000_000, have[5] if have else 0, have[6] if have else "")
    d = manifest.diff(exp, vm)
    classes = {}
    for p in (*d.added, *d.changed, *d.removed):
        row = vm.get(p) or exp.get(p)
        is_dir = bool(row) and stat.S_ISDIR(row[0])
        owned = p in owned_facts or p.startswith(prefixes)
        classes[p] = ((classify and classify(p, is_dir)) or install_excluded(p, is_dir)
                      or ("owned" if owned else "image" if p in expected else "local"))
    return d, classes


def _seconds(rows: dict) -> dict:
    return {p: (f[0], f[1], f[2], f[3], f[4] // 1_000_000_000, f[5], f[6]) for p, f in rows.items()}


def generation(rec) -> dict:
    updated = getattr(rec, "updated", "") or rec.extra.get("updated", "")
    return {"fingerprint": rec.image_fingerprint, "image_time": rec.image_time,
            "since": updated or rec.created, "how": "updated" if updated else "made"}


# -- the image side -------------------------------------------------------------------------

def image_key(rec) -> tuple:
    """VMs with equal keys see one tree: a local image's VM differs by the overrides that
    SystemImager lays for its host (named like it, its cluster.txt groups)."""
    src = rec.source or {}
    key = (rec.image, src.get("server", ""), tuple(src.get("overrides") or ()))
    if src.get("server"):
        return key
    from .image import source, store_config

    try:
        cfg = store_config()
        with open(os.path.join(cfg.scripts_dir, "cluster.txt"), encoding="utf-8", errors="replace") as f:
            groups = tuple(source._groups(f.read(), [rec.name])[1])
    except (OSError, Fatal):
        cfg, groups = None, ()
    short = rec.name.split(".")[0]
    mine = cfg is not None and os.path.isdir(os.path.join(cfg.overrides_dir, short))
    return (*key, groups, short if mine else "")


def open_image(rec, paths: dict) -> str:
    """The tree si_mkxenvm would deploy for ``rec`` now, without pulling: the local image (its
    view with the overrides), or a server image's cached ``current`` generation (its newest
    view when overrides were laid). Fatal when there is none."""
    from .image import source

    src = rec.source or {}
    overrides = list(src.get("overrides") or ())
    name = (rec.request or {}).get("image") or rec.image
    if not src.get("server"):
        return source.from_store(name, overrides, rec.name, paths, lambda _m: None).path
    from .image import remote
    from .image.cache import Cached

    c = Cached(paths["cache_dir"], paths["lock_dir"], remote.parse_server(src["server"]), rec.image)
    gen = c.current()
    if gen is None:
        raise Fatal(f"image '{rec.image}' of {src['server']} is not in this host's cache",
                    "si_mkxenvm pulls it; --drift never does")
    views = sorted(glob.glob(os.path.join(c.dir, f"view-{os.path.basename(gen)[4:]}-*")), key=os.path.getmtime)
    return views[-1] if overrides and views else gen


def image_side(rec, paths: dict, facts_dir: str) -> tuple[str, str] | str:
    """(path, fingerprint) of the image now, its manifest saved; or why there is none."""
    try:
        path = open_image(rec, paths)
        return path, survey.survey(path, facts_dir).fingerprint
    except Fatal as e:
        return f"image '{rec.image}' cannot be opened now: {e}"
    except OSError as e:
        return f"image '{rec.image}' cannot be read now: {e.strerror or e}"


# -- the report -----------------------------------------------------------------------------

def drift(states, settings, running: set[str] | None, classify: Classify | None = None) -> list[VmDrift]:
    """One VmDrift per journal state, in order (``running``: the domains the toolstack lists,
    None when none answers)."""
    paths = settings.paths
    facts_dir = os.path.join(paths["state_dir"], "images")
    recs = [s.record for s in states if s.record is not None]
    sides: dict[tuple, proc.Ahead] = {}
    for rec in recs:  # every image walked once, while the VMs are read
        if image_key(rec) not in sides:
            sides[image_key(rec)] = proc.Ahead(image_side, rec, paths, facts_dir)
    got: dict[tuple, object] = {}
    try:
        return [_one(s, settings, running, classify, sides, got, facts_dir) for s in states]
    finally:
        for a in sides.values():
            if a.status is None:
                a.close()


def _how_read(rec, state: str, mode: str) -> list[str]:
    """What the figures rest on, truthfully: a VM that is not running but was read as a running
    one is (not ``offline``) was not shut down cleanly (vmread.read_mode), and must not be said to run."""
    if mode == "offline":
        return []
    if state == "running":
        return ["WARNING: the VM runs and its disks cannot be copied: read live, "
                "so these figures may be inconsistent"] if mode == "live" else []
    dirty = ", ".join(vmread.unclean(rec)) or "its journal"
    if mode == "live":
        return [f"WARNING: the VM was not shut down cleanly ({dirty}) and its disks cannot be copied: read as they "
                "are, without what its journal holds, so these figures may miss recent changes"]
    return [f"the VM was not shut down cleanly ({dirty}): read from a {'copy' if mode == 'copy' else 'thin snapshot'} "
            "of its disks with its journal replayed"]


def _one(st, settings, running, classify, sides, got, facts_dir) -> VmDrift:
    t0 = time.monotonic()
    rec = st.record
    if rec is None:
        return VmDrift(st.name, st.vm.image, "incomplete", notes=["unfinished deploy: nothing to compare"])
    state = "unknown" if running is None else ("running" if rec.name in running else "stopped")
    out = VmDrift(rec.name, rec.image, state, generation=generation(rec))
    lock_dir = settings.paths["lock_dir"]
    try:
        with exclusive(os.path.join(lock_dir, f"{rec.name}.lock"), wait=False):
            out.read = read_mode(rec, state == "running")
            out.notes += _how_read(rec, state, out.read)
            vm, notes, own_rules = read_vm(rec, out.read, lock_dir)
            out.notes += notes
    except LockBusy as e:
        out.busy = e.pid or -1
        return out
    except (proc.ProcError, OSError, ValueError, EOFError) as e:
        out.notes.append(f"WARNING: could not read the VM's disks: {e}")
        out.seconds = time.monotonic() - t0
        return out
    key = image_key(rec)
    if key not in got:
        got[key] = sides[key].result()  # None: its child failed
    now = got[key]
    old = manifest.load(facts_dir, rec.image_fingerprint) if rec.image_fingerprint else None
    cur = None
    if isinstance(now, tuple):
        path, fp = now
        cur = old if fp == rec.image_fingerprint else manifest.load(facts_dir, fp)
        out.image_now = {"fingerprint": fp, "moved_on": fp != rec.image_fingerprint, "added": 0, "changed": 0,
                         "removed": 0}
        if old is not None and cur is not None and fp != rec.image_fingerprint:
            d = manifest.diff(old, cur)
            out.image_now.update(added=len(d.added), changed=len(d.changed), removed=len(d.removed))
    elif isinstance(now, str):
        out.notes.append(now)
    else:
        out.notes.append(f"image '{rec.image}' could not be walked now")
    expected = old
    if expected is None:
        if cur is None:
            out.notes.append("no manifest of the VM's generation, and no image now: nothing to compare with")
            out.seconds = time.monotonic() - t0
            return out
        expected = cur
        out.notes.append("no manifest of the VM's generation (made by an older si-xen?): compared with the image now")
    d, out.classes = compare(expected, rec.owned_facts, vm, owned_prefixes(rec), classify or own_rules)
    out.added, out.changed, out.removed = d.added, d.changed, d.removed
    out.seconds = time.monotonic() - t0
    return out
