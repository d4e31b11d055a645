"""Sizes as admins type them: 256M, 2G, 2Gb, 512MiB, 2048 (MiB)."""

from __future__ import annotations

import re

from .errors import Fatal

_UNITS = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_mib(text: str | int, what: str = "size") -> int:
    """Return a size in MiB; bare numbers are MiB (xen-tools documents that, and we honour it)."""
    if isinstance(text, int):
        return text
    m = _RE.match(str(text))
    if not m:
        raise Fatal(f"invalid {what} '{text}'", "use a number with an optional unit, e.g. 256M, 2G, 2048")
    mib = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if mib < 1 or mib != int(mib):
        raise Fatal(f"invalid {what} '{text}'", "sizes are whole MiB, at least 1M")
    return int(mib)


def human(mib: int) -> str:
    return f"{mib // 1024}G" if mib % 1024 == 0 and mib >= 1024 else f"{mib}M"
