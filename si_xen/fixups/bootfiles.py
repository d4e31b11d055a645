"""Kernel command lines in the bootloader files a guest may carry, edited in place.

pygrub reads menu.lst / grub.conf / grub.cfg; /etc/default/grub, BLS entries and grubenv
feed the next update-grub inside the guest. Each editor gets and returns an args string.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from si_xen.fixups.base import Ctx

LEGACY = ("boot/grub/menu.lst", "boot/grub/grub.conf", "etc/grub.conf")
GRUB2 = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg")
DEFAULT = ("etc/default/grub",)
_LEGACY_RE = re.compile(r"^(\s*kernel\s+\S+)([^\n]*)$", re.M)
_GRUB2_RE = re.compile(r"^(\s*linux(?:16|efi)?\s+\S+)([^\n]*)$", re.M)
_BLS_RE = re.compile(r"^(options)([^\n]*)$", re.M)
_ENV_RE = re.compile(r"^(kernelopts=)([^\n]*)$", re.M)
_DEFAULT_RE = re.compile(r'^(GRUB_CMDLINE_LINUX=)(["\']?)(.*?)\2[ \t]*$', re.M)
_DEFAULT_DFLT_RE = re.compile(r'^(GRUB_CMDLINE_LINUX_DEFAULT=)(["\']?)(.*?)\2[ \t]*$', re.M)


def _sub(regex: re.Pattern, edit: Callable[[str], str], sep: str = " "):
    def apply(text: str) -> str:
        def one(m: re.Match) -> str:
            args = edit(m.group(2).strip())
            return m.group(1) + (sep + args if args else "")

        return regex.sub(one, text)

    return apply


def _default(edit: Callable[[str], str]):
    """GRUB_CMDLINE_LINUX gets the edit; _DEFAULT too, minus what the first line now carries."""

    def apply(text: str) -> str:
        if not _DEFAULT_RE.search(text):
            sep = "" if text.endswith("\n") or not text else "\n"
            text += f'{sep}GRUB_CMDLINE_LINUX=""\n'
        linux = ""

        def one(m: re.Match) -> str:
            nonlocal linux
            linux = edit(m.group(3).strip())
            return f'{m.group(1)}"{linux}"'

        text = _DEFAULT_RE.sub(one, text)

        def dflt(m: re.Match) -> str:
            old = m.group(3).split()
            new = [w for w in edit(m.group(3).strip()).split() if w in old or w not in linux.split()]
            return f'{m.group(1)}"{" ".join(new)}"' if new != old else m.group(0)

        return _DEFAULT_DFLT_RE.sub(dflt, text)

    return apply


def _grubenv(apply):
    """grubenv is a fixed 1024-byte block padded with '#': keep its size."""

    def fixed(text: str) -> str:
        body = apply(text.rstrip("#"))
        return body + "#" * max(0, len(text) - len(body)) if body != text.rstrip("#") else text

    return fixed


def edit_cmdlines(ctx: Ctx, edit: Callable[[str], str]) -> None:
    """Apply ``edit`` to every kernel argument string in the guest's bootloader files."""
    g = ctx.guest
    for path in LEGACY:
        if not g.islink(path):  # etc/grub.conf is usually a link to boot/grub/grub.conf
            ctx.edit(path, _sub(_LEGACY_RE, edit))
    for path in GRUB2:
        ctx.edit(path, _sub(_GRUB2_RE, edit))
    for path in DEFAULT:
        ctx.edit(path, _default(edit))
    for path in g.glob("boot/loader/entries", "*.conf"):
        ctx.edit(path, _sub(_BLS_RE, edit))
    ctx.edit("boot/grub2/grubenv", _grubenv(_sub(_ENV_RE, edit, sep="")))
    if g.isfile("etc/kernel/cmdline"):
        ctx.edit("etc/kernel/cmdline", lambda t: edit(t.strip()) + "\n")


def set_arg(args: str, key: str, value: str | None) -> str:
    """``args`` with the first ``key=...`` set to ``key=value`` in place, any others dropped
    (all dropped if ``value`` is None); appended when absent."""
    out, placed = [], False
    for w in args.split():
        if w.startswith(key + "="):
            if value is not None and not placed:
                out.append(f"{key}={value}")
                placed = True
            continue
        out.append(w)
    if value is not None and not placed:
        out.append(f"{key}={value}")
    return " ".join(out)
