"""Fixup units and the context they work in.

A fixup is a function ``f(ctx)`` registered with :func:`fixup`; its docstring's first line
is the one-line summary, the rest the help text (``si_xenhooks list``, the man page and
``--help`` all read this metadata). Changes go through :class:`Ctx`, which confines them to
the guest (via :class:`~si_xen.guestfs.Guest`) and notes each one for the report; the runner's
RecordingGuest records the paths themselves (what the VM's record says each fixup owns).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from si_xen.distros import OSInfo
from si_xen.fixups.spec import GuestSpec
from si_xen.guestfs import Guest, RecordingGuest


@dataclass(frozen=True)
class Fixup:
    name: str
    order: int
    hook: str  # xen-tools hook file name, NN-name
    summary: str
    help: str
    func: Callable[[Ctx], None] = field(repr=False)  # every family: differences live in OSInfo's data
    # guest path globs whose change (an update fetched or deleted one) makes it run again
    watches: tuple[str, ...] = ()
    _watch_re: re.Pattern | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_watch_re", watch_regex(self.watches))

    def watching(self, path: str) -> bool:
        """Whether a change to guest ``path`` (leading '/' or not) concerns this fixup."""
        return self._watch_re is not None and self._watch_re.fullmatch(path.strip("/")) is not None


def _braces(glob: str) -> list[str]:
    """``{a,b}`` alternatives expanded (the first group, then recursively): ``{,usr/}lib`` ->
    ``lib``, ``usr/lib``."""
    m = re.search(r"\{([^{}]*)\}", glob)
    if not m:
        return [glob]
    return [x for alt in m.group(1).split(",") for x in _braces(glob[:m.start()] + alt + glob[m.end():])]


def _glob_re(glob: str) -> str:
    """rsync's wildcards over a whole guest path (no leading '/'): ``*`` and ``?`` stop at '/',
    ``**`` crosses it, ``**/`` also matches no directory at all, ``[...]`` is a class."""
    out, i = [], 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and "]" in glob[i + 2:]:
            j = glob.index("]", i + 2)
            body = glob[i + 1:j]
            out.append("[" + ("^" + body[1:] if body[:1] == "!" else body).replace("\\", "\\\\") + "]")
            i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def watch_regex(globs) -> re.Pattern | None:
    """One regex for all of ``globs`` (None: no globs), compiled once per fixup."""
    alts = [_glob_re(g.strip("/")) for glob in globs for g in _braces(glob)]
    return re.compile("|".join(f"(?:{a})" for a in alts)) if alts else None


REGISTRY: list[Fixup] = []


def ordered() -> list[Fixup]:
    """The fixups in the order they run (called after imports: every one is registered once
    the package si_xen.fixups is imported, which Python does before any module in it)."""
    return sorted(REGISTRY, key=lambda f: (f.order, f.name))


def fixup(name: str, order: int, hook: str, watches: tuple[str, ...] = ()):
    """Register ``f(ctx)``; ``watches``: guest path globs (rsync wildcards, ``{a,b}``) whose
    change by an update makes it run again, besides the paths it wrote (its owned ones)."""

    def deco(func):
        doc = inspect.cleandoc(func.__doc__ or name)
        summary, _, rest = doc.partition("\n")
        REGISTRY.append(Fixup(name, order, f"{order:02d}-{hook}", summary.strip(), rest.strip(), func,
                              tuple(watches)))
        return func

    return deco


@dataclass
class Ctx:
    guest: Guest
    os: OSInfo
    s: GuestSpec
    log: Callable[[str], None] = print
    changes: list[str] = field(default_factory=list)
    xen_tools: bool = False  # running under xen-create-image: resolv.conf is swapped

    def note(self, msg: str) -> None:
        self.changes.append(msg)

    def own(self, gpath: str) -> None:
        """A tree the fixup wrote by other means than the guest's methods: all of it is its."""
        if isinstance(self.guest, RecordingGuest):
            self.guest.own(gpath)

    def warn(self, msg: str) -> None:
        self.log(f"WARNING: {msg}")

    def write(self, gpath: str, text: str, mode: int | None = None, replace_link: bool = True) -> bool:
        """Write a guest file (a link there is replaced, never followed, if ``replace_link``)."""
        if replace_link and self.guest.islink(gpath):
            self.guest.unlink(gpath)
        if self.guest.write_text(gpath, text, mode):
            self.note(f"wrote /{gpath}")
            return True
        return False

    def edit(self, gpath: str, func: Callable[[str], str]) -> bool:
        """Rewrite an existing regular guest file through ``func``; absent files are left alone."""
        if not self.guest.isfile(gpath):
            return False
        old = self.guest.read_text(gpath) or ""
        new = func(old)
        if new == old:
            return False
        self.guest.write_text(gpath, new)
        self.note(f"edited /{gpath}")
        return True

    def remove(self, gpath: str) -> bool:
        if self.guest.unlink(gpath):
            self.note(f"removed /{gpath}")
            return True
        return False

    def link(self, target: str, gpath: str) -> bool:
        if self.guest.symlink(target, gpath):
            self.note(f"linked /{gpath} -> {target}")
            return True
        return False


def lib_dirs(guest: Guest, sub: str) -> list[str]:
    """``sub`` under the guest's lib dirs (lib, usr/lib), deduplicated across merged /usr."""
    seen, out = set(), []
    for base in ("lib", "usr/lib"):
        host = guest.path(f"{base}/{sub}")
        if host not in seen and guest.isdir(f"{base}/{sub}"):
            seen.add(host)
            out.append(f"{base}/{sub}")
    return out
