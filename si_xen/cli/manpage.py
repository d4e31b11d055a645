"""Section 8 man pages rendered from the commands' own argparse parsers, so --help and
man never disagree (and si-xen-ganeti(7) from the Ganeti OS's parameters).
``python3 -m si_xen.cli.manpage DIR`` writes them all."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import PROJECT, __version__
from ..roff import esc
from .common import EXIT_STATUS

COMMANDS = ("mkxenvm", "lsxenvm", "rmxenvm", "updatexenvm", "getxenimage")


def _opt(action: argparse.Action) -> str:
    names = ", ".join(f"\\fB{esc(s)}\\fR" for s in action.option_strings) or f"\\fI{esc(action.metavar or action.dest).upper()}\\fR"
    if action.option_strings and action.nargs != 0:
        names += f" \\fI{esc(action.metavar or action.dest.upper())}\\fR"
    return names


def render(prog: str, parser: argparse.ArgumentParser, man: dict) -> str:
    """``man``: summary, description, and optional examples/files/see_also/extra sections."""
    title = prog.upper().replace("_", "\\_")
    lines = [
        f'.TH {title} 8 "" "{PROJECT} {__version__}" "{PROJECT}"',
        ".SH NAME",
        f"{esc(prog)} \\- {esc(man['summary'])}",
        ".SH SYNOPSIS",
        f".B {esc(prog)}",
        esc(man["synopsis"]),
        ".SH DESCRIPTION",
        esc(man["description"]),
    ]
    for title, body in man.get("extra", ()):
        lines += [f".SH {title}", esc(body)]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS]
        if not actions:
            continue
        title = group.title.upper() if group.title not in ("options", "optional arguments") else "OPTIONS"
        lines.append(f".SH {esc(title)}")
        for a in actions:
            lines += [".TP", _opt(a), esc(a.help or "")]
    lines += [".SH EXIT STATUS", esc(" ".join(filter(None, (EXIT_STATUS, man.get("exit_status")))))]
    for title in ("examples", "files", "see_also"):
        if man.get(title):
            lines += [f".SH {title.replace('_', ' ').upper()}", ".nf" if title == "examples" else "", esc(man[title])]
            if title == "examples":
                lines.append(".fi")
    return "\n".join(x for x in lines if x != "") + "\n"


def page(cmd: str) -> tuple[str, str]:
    mod = importlib.import_module(f"si_xen.cli.{cmd}")
    return f"si_{cmd}.8", render(mod.PROG, mod.build_parser(), mod.MAN)


def main(argv=None) -> int:
    out = (argv or sys.argv[1:] or ["man"])[0]
    from ..ganeti import manpage as ganeti

    pages = [page(cmd) for cmd in COMMANDS] + [("si-xen-ganeti.7", ganeti.render())]
    for name, text in pages:
        with open(os.path.join(out, name), "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
