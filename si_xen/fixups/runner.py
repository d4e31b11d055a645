"""Run the selected fixups on a mounted guest root, in order (``run_all``): for si_mkxenvm,
Ganeti's scripts, si_xenhooks run, and the xen-tools hooks (fixups.hooks).

The fixups read only the GuestSpec; a second run changes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from si_xen.distros import OSInfo, detect
from si_xen.errors import Fatal
from si_xen.fixups.base import Ctx, Fixup, ordered
from si_xen.fixups.spec import GuestSpec
from si_xen.guestfs import GuestPathError, RecordingGuest


class Ran(tuple):
    """One fixup's ``(name, changes)``, the pair callers unpack, and ``touched``: the guest
    paths it wrote, removed, linked or made (sorted; a trailing / is a whole tree)."""

    touched: tuple[str, ...]

    def __new__(cls, name: str, changes: list[str], touched=()):
        self = super().__new__(cls, (name, changes))
        self.touched = tuple(sorted(touched))
        return self


def _names(value) -> set[str]:
    if not value:
        return set()
    if isinstance(value, str):
        value = value.split(",")
    return {v.strip() for v in value if v.strip()}


def select(only=None, skip=None) -> list[Fixup]:
    fixups = ordered()
    want, drop = _names(only), _names(skip)
    known = {f.name for f in fixups} | {f.hook for f in fixups}
    unknown = sorted((want | drop) - known)
    if unknown:
        raise Fatal(f"unknown fixup {', '.join(unknown)}", "see si_xenhooks list")
    return [f for f in fixups if (not want or {f.name, f.hook} & want) and not {f.name, f.hook} & drop]


def run_all(
    root: str,
    spec: GuestSpec,
    only: Iterable[str] | str | None = None,
    skip: Iterable[str] | str | None = None,
    log: Callable[[str], None] = print,
    xen_tools: bool = False,
    osinfo: OSInfo | None = None,
) -> list[Ran]:
    """Apply the selected fixups in order; return (name, changes) for each (empty = no-op),
    with the paths each touched (``Ran.touched``).

    ``osinfo``: the guest's OS as the caller already detected (and reported) it."""
    if not os.path.isdir(root):
        raise Fatal(f"guest root {root} is not a directory", "give the mounted guest filesystem")
    chosen = select(only, skip)
    guest = RecordingGuest(root)
    if osinfo is None:
        osinfo = detect(guest, require=False)
        if not osinfo.known:  # named as the guest sees itself: never the host path of its root
            log(f"WARNING: unknown OS ({osinfo.pretty}): generic {osinfo.init} handling only")
    results = []
    for fx in chosen:
        guest.touched = set()  # what this fixup touches
        ctx = Ctx(guest, osinfo, spec, log=log, xen_tools=xen_tools)
        try:
            fx.func(ctx)
        except GuestPathError as e:
            # a link loop planted in the image: refuse that file, keep going
            ctx.warn(f"{fx.name}: {e.gpath}: {e.reason}; left alone")  # the guest path, not the mount
        for c in ctx.changes:
            log(f"{fx.name}: {c}")
        results.append(Ran(fx.name, ctx.changes, guest.touched))
    return results
