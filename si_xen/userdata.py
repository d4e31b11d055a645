"""``--user-data FILE``: cloud-init's user-data for the NoCloud seed (fixups/cloudinit.py writes it),
read and checked when the request is made, before anything is. Apart from the fixups: the request
imports it, and the fixups' package imports the planner, which imports the request.
"""

from __future__ import annotations

import os
import re

from .errors import Fatal

MAX = 1 << 20  # a seed, not a payload store


def check_user_data(text: str, what: str) -> None:
    """A ``#cloud-config`` document that is a YAML mapping (checked by PyYAML where it is installed,
    else its form only: UTF-8, no tab indenting), or a script (``#!``); anything else one FATAL."""
    fix = "give a '#cloud-config' YAML document or a script beginning with '#!'"
    if "\x00" in text:
        raise Fatal(f"{what} is not text (it holds NUL bytes)", fix)
    first = text.split("\n", 1)[0].rstrip()
    if first.startswith("#!"):
        return
    if first != "#cloud-config":
        raise Fatal(f"{what} begins with neither '#cloud-config' nor '#!' (a MIME, gzip or include "
                    "document is not taken)", fix)
    try:
        import yaml  # python3-yaml: not a dependency of si-xen
    except ImportError:
        lines = text.split("\n")
        bad = next((n for n, ln in enumerate(lines, 1) if re.match(r" *\t", ln)), None)
        if bad:
            raise Fatal(f"{what}: line {bad} is indented with a tab, which YAML forbids", fix) from None
        # a mapping's first entry is a key at the left margin (a list or a scalar cloud-init rejects at every boot)
        n, first = next(((n, ln) for n, ln in enumerate(lines, 1) if ln.strip() and not ln.lstrip().startswith("#")),
                        (0, ""))
        if first and not re.match(r"""[^\s#\-\[{'"][^:]*:(\s|$)|(?P<q>['"]).+?(?P=q)\s*:(\s|$)""", first):
            raise Fatal(f"{what}: line {n} does not begin a mapping of cloud-config keys ('key: value')", fix) from None
        return
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise Fatal(f"{what} is not valid YAML{line}: {getattr(e, 'problem', None) or e}", fix) from None
    if data is not None and not isinstance(data, dict):
        raise Fatal(f"{what} is YAML but not a mapping of cloud-config keys", fix)


def read_user_data(path: str) -> str:
    """``--user-data FILE``'s text, checked: a missing, unreadable or invalid file is one FATAL."""
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would hang us, a device feed us
        raise Fatal(f"cannot read --user-data {path}: not a regular file", "give a readable file")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX + 1)
    except OSError as e:
        raise Fatal(f"cannot read --user-data {path}: {e.strerror}", "give a readable file") from None
    if len(raw) > MAX:
        raise Fatal(f"--user-data {path} is over 1 MiB", "give a smaller document")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Fatal(f"--user-data {path} is not UTF-8 text", "give a '#cloud-config' YAML document or a script "
                    "beginning with '#!'") from None
    check_user_data(text, f"--user-data {path}")
    return text
