"""Fixup units and the context they work in.

A fixup is a function ``f(ctx)`` registered with :func:`fixup`; its docstring's first line
is the one-line summary, the rest the help text (``si_xenhooks list``, the man page and
``--help`` all read this metadata). Changes go through :class:`Ctx`, which confines them to
the guest (via :class:`~si_xen.guestfs.Guest`) and notes each one for the report; the runner's
RecordingGuest records the paths themselves (what the VM's record says each fixup owns).
"""

from __future__ import annotations

import inspect
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


REGISTRY: list[Fixup] = []


def ordered() -> list[Fixup]:
    """The fixups in the order they run (called after imports: every one is registered once
    the package si_xen.fixups is imported, which Python does before any module in it)."""
    return sorted(REGISTRY, key=lambda f: (f.order, f.name))


def fixup(name: str, order: int, hook: str):
    def deco(func):
        doc = inspect.cleandoc(func.__doc__ or name)
        summary, _, rest = doc.partition("\n")
        REGISTRY.append(Fixup(name, order, f"{order:02d}-{hook}", summary.strip(), rest.strip(), func))
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
