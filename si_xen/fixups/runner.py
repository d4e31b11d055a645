"""Run fixups on a guest root: in-process (``run_all``) or as one xen-tools hook (``hook_main``).

The fixups read only the GuestSpec. The xen-tools contract (reference xen-tools.md §1.2):
``$1`` is the guest root, settings come only from the environment (read by the xen-tools
adapter into the spec), exit 0 on success, a second run changes nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

from si_xen.distros import OSInfo, detect
from si_xen.errors import Fatal
from si_xen.fixups.base import Ctx, Fixup
from si_xen.fixups.spec import GuestSpec
from si_xen.fixups.xentools import spec_from_env
from si_xen.guestfs import Guest, GuestPathError


def _names(value) -> set[str]:
    if not value:
        return set()
    if isinstance(value, str):
        value = value.split(",")
    return {v.strip() for v in value if v.strip()}


def select(only=None, skip=None) -> list[Fixup]:
    from si_xen.fixups import FIXUPS

    want, drop = _names(only), _names(skip)
    known = {f.name for f in FIXUPS} | {f.hook for f in FIXUPS}
    unknown = sorted((want | drop) - known)
    if unknown:
        raise Fatal(f"unknown fixup {', '.join(unknown)}", "see si_xenhooks list")
    return [f for f in FIXUPS if (not want or {f.name, f.hook} & want) and not {f.name, f.hook} & drop]


def run_all(
    root: str,
    spec: GuestSpec,
    only: Iterable[str] | str | None = None,
    skip: Iterable[str] | str | None = None,
    log: Callable[[str], None] = print,
    xen_tools: bool = False,
    osinfo: OSInfo | None = None,
) -> list[tuple[str, list[str]]]:
    """Apply the selected fixups in order; return (name, changes) for each (empty = no-op).

    ``osinfo``: the guest's OS as the caller already detected (and reported) it."""
    if not os.path.isdir(root):
        raise Fatal(f"guest root {root} is not a directory", "give the mounted guest filesystem")
    chosen = select(only, skip)
    guest = Guest(root)
    if osinfo is None:
        osinfo = detect(guest, require=False)
        if not osinfo.known:  # named as the guest sees itself: never the host path of its root
            log(f"WARNING: unknown OS ({osinfo.pretty}): generic {osinfo.init} handling only")
    results = []
    for fx in chosen:
        ctx = Ctx(guest, osinfo, spec, log=log, xen_tools=xen_tools)
        try:
            fx.func(ctx)
        except GuestPathError as e:
            # a link loop planted in the image: refuse that file, keep going
            ctx.warn(f"{fx.name}: {e.gpath}: {e.reason}; left alone")  # the guest path, not the mount
        for c in ctx.changes:
            log(f"{fx.name}: {c}")
        results.append((fx.name, ctx.changes))
    return results


def hook_main(name: str, argv: list[str] | None = None) -> int:
    """Entry point of one ``hooks/NN-name`` executable."""
    argv = sys.argv[1:] if argv is None else argv
    prog = f"si-xen hook {name}"
    if len(argv) != 1 or not argv[0]:
        print(f"FATAL: {prog}: usage: HOOK PREFIX (the mounted guest root)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if msg.startswith("WARNING:") else sys.stdout, flush=True)

    try:
        run_all(argv[0], spec_from_env(os.environ), only=[name], log=log, xen_tools=True)
    except Fatal as e:
        print(f"FATAL: {prog}: {e}", file=sys.stderr)
        return 1
    return 0


def role_main(argv: list[str] | None = None) -> int:
    """xen-tools role script: every fixup, after the hooks (resolv.conf is the guest's again)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("FATAL: si-xen role: usage: ROLE PREFIX [ARGS]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if env.get("ip", "").startswith("ARRAY(") and not env.get("ip1"):
        print("WARNING: si-xen role: --hooks=0 hides the --ip addresses from roles; configuring DHCP",
              file=sys.stderr)
    try:
        run_all(argv[0], spec_from_env(env), log=lambda m: print(m, flush=True))
    except Fatal as e:
        print(f"FATAL: si-xen role: {e}", file=sys.stderr)
        return 1
    return 0
