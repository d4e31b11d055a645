"""Kernel command lines in the bootloader files a guest may carry, edited in place.

pygrub reads menu.lst / grub.conf / grub.cfg; /etc/default/grub, BLS entries and grubenv
feed the next update-grub inside the guest. Each editor gets and returns an args string.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from si_xen.fixups.base import Ctx

LEGACY = ("boot/grub/menu.lst", "boot/grub/grub.conf", "etc/grub.conf")
GRUB2 = ("boot/grub/grub.cfg", "boot/grub2/grub.cfg")
DEFAULT = ("etc/default/grub",)
_LEGACY_RE = re.compile(r"^(\s*kernel\s+\S+)([^\n]*)$", re.M)
_GRUB2_RE = re.compile(r"^(\s*linux(?:16|efi)?\s+\S+)([^\n]*)$", re.M)
_BLS_RE = re.compile(r"^(options)([^\n]*)$", re.M)
_ENV_RE = re.compile(r"^(kernelopts=)([^\n]*)$", re.M)


def _sub(regex: re.Pattern, edit: Callable[[str], str], sep: str = " "):
    def apply(text: str) -> str:
        def one(m: re.Match) -> str:
            args = edit(m.group(2).strip())
            return m.group(1) + (sep + args if args else "")

        return regex.sub(one, text)

    return apply


def _shell_word(raw: str) -> str | None:
    """The value ``KEY=raw`` assigns in sh, or None when it is not one word (an unterminated
    quote, unquoted spaces): then it is not ours to rewrite."""
    try:
        words = shlex.split(raw, comments=True)
    except ValueError:
        return None
    if len(words) > 1 or (words and raw[:1].isspace()):
        return None
    return words[0] if words else ""


def _quoted(value: str, raw: str) -> str:
    if raw.lstrip().startswith("'") or re.search(r'["\\`]', value):
        return shlex.quote(value)  # single quotes, as the golden file had or as the value needs
    return f'"{value}"'  # keeps $VAR expanding as it did


def _default(edit: Callable[[str], str], warn: Callable[[int, str], None]):
    """GRUB_CMDLINE_LINUX gets the edit; _DEFAULT too, minus what the first line now carries.
    A line sh would not read as one assignment is left as it is and ``warn``ed (line, key)."""

    def apply(text: str) -> str:
        lines, linux, seen = text.split("\n"), "", False
        for key in ("GRUB_CMDLINE_LINUX", "GRUB_CMDLINE_LINUX_DEFAULT"):
            for i, line in enumerate(lines):
                if not line.startswith(key + "="):
                    continue
                raw = line[len(key) + 1:]
                value = _shell_word(raw)
                if value is None:
                    warn(i + 1, key)
                    seen = True
                    continue
                old = value.split()
                if key == "GRUB_CMDLINE_LINUX":
                    seen, linux = True, edit(value.strip())
                    new = linux.split()
                else:
                    new = [w for w in edit(value.strip()).split() if w in old or w not in linux.split()]
                if new != old:
                    lines[i] = f"{key}={_quoted(' '.join(new), raw)}"
            if not seen:
                sep = "" if text.endswith("\n") or not text else "\n"
                return _default(edit, warn)(text + f'{sep}GRUB_CMDLINE_LINUX=""\n')
        return "\n".join(lines)

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
    def unread(line: int, key: str) -> None:
        ctx.warn(f"/{path} line {line}: {key} is not one sh word (an unterminated quote, or unquoted spaces): "
                 "left as it is; update-grub inside the guest fails on it until it is corrected")

    for path in DEFAULT:
        ctx.edit(path, _default(edit, unread))
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
