"""The golden client's network settings, kept aside in the guest rather than deleted.

A VM captured back into an image must get them again, so each goes under one place that no
network stack reads, /var/lib/si-xen/golden/, at its own path (/etc/x -> /var/lib/si-xen/golden/etc/x),
and is listed in /var/lib/si-xen/golden/MANIFEST, one tab-separated line each:
``file <original path> <kept copy>`` or ``link <original path> <link target>`` (an enablement
link removed: recreate it to restore).
"""

from __future__ import annotations

import os
import stat

from si_xen.fixups.base import Ctx

GOLDEN = "var/lib/si-xen/golden"
MANIFEST = f"{GOLDEN}/MANIFEST"
MANIFEST_HEAD = ("# si-xen kept the golden client's network settings aside: move each file back,"
                 " recreate each link, to restore them\n")


def read_manifest(guest) -> dict[str, tuple[str, str]]:
    """MANIFEST as written here: original path -> ("file", kept copy) or ("link", target); a path
    kept more than once: the last (the newest golden version an update saw). Capture reads it."""
    out = {}
    for line in (guest.read_text(MANIFEST) or "").splitlines():
        kind, _, rest = line.partition("\t")
        orig, _, where = rest.partition("\t")
        if kind in ("file", "link") and orig.startswith("/") and where:
            out[orig] = (kind, where)
    return out


def _record(ctx: Ctx, line: str) -> None:
    old = ctx.guest.read_text(MANIFEST) or MANIFEST_HEAD
    if line + "\n" not in old:
        ctx.guest.write_text(MANIFEST, old + line + "\n", 0o600)


def _free(ctx: Ctx, gpath: str, text: str) -> str:
    """Where ``gpath`` goes: its own path under GOLDEN (.1, .2... if kept before with other text);
    a copy kept before with this text is reused (fixups run again keep no second copy)."""
    dest, n = f"{GOLDEN}/{gpath}", 0
    while ctx.guest.exists(name := dest if n == 0 else f"{dest}.{n}"):
        if ctx.guest.isfile(name) and ctx.guest.read_text(name) == text:
            return name
        n += 1
    return name


def keep(ctx: Ctx, gpath: str, move: bool = True) -> str | None:
    """Copy the guest file (or link) ``gpath`` aside and, if ``move``, remove it; returns its text."""
    g = ctx.guest
    if g.islink(gpath):
        target = g.readlink(gpath)
        text = g.read_text(gpath)
        _record(ctx, f"link\t/{gpath}\t{target}")
        if move and g.unlink(gpath):
            ctx.note(f"kept /{gpath} (a link to {target}) aside in /{MANIFEST}")
        return text
    text = g.read_text(gpath)
    if text is None:
        return None
    mode = stat.S_IMODE(os.stat(g.path(gpath)).st_mode)
    dest = _free(ctx, gpath, text)
    g.write_text(dest, text, mode)
    _record(ctx, f"file\t/{gpath}\t/{dest}")
    if move:
        g.unlink(gpath)
    ctx.note(f"kept /{gpath} aside as /{dest}")
    return text


def disable(ctx: Ctx, link: str) -> None:
    """Remove an enablement link (a unit's or an rc script's), recorded to be made again."""
    target = ctx.guest.readlink(link)
    _record(ctx, f"link\t/{link}\t{target}")
    if ctx.guest.unlink(link):
        ctx.note(f"disabled /{link} (-> {target}; kept in /{MANIFEST})")


def edit(ctx: Ctx, gpath: str, func) -> bool:
    """``ctx.edit`` that first keeps the golden file aside when the edit changes it."""
    old = ctx.guest.read_text(gpath) if ctx.guest.isfile(gpath) else None
    if old is None or func(old) == old:
        return False
    keep(ctx, gpath, move=False)
    return ctx.edit(gpath, func)
