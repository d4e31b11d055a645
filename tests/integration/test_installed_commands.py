"""Each checked-in man page (man/*.8) names exactly the options and subcommands that ``--help``
of the installed command offers: the commands in this environment's scripts dir (.venv/bin,
as pip installed them), run as processes. The section-8 pages are rendered from the parsers,
si_xenhooks.8 is written by hand: either can fall behind the command a user runs."""

from __future__ import annotations

import os
import re
import subprocess
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
MAN = Path(__file__).resolve().parents[2] / "man"
PAGES = [p.name for p in sorted(MAN.glob("*.8"))]
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def helps(prog: str, *sub: str) -> str:
    cmd = os.path.join(sysconfig.get_path("scripts"), prog)
    assert os.access(cmd, os.X_OK), f"{cmd} is not installed (run tests/setup-host)"
    out = subprocess.run([cmd, *sub, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def offered(text: str) -> tuple[set[str], set[str]]:
    """The options of argparse's usage block and its option headings (every option not
    suppressed; the usage shows only an option's first name), and the subcommands listed under
    its positional arguments (4-space indented names)."""
    usage = text.split("\n\n", 1)[0]
    headings = re.findall(r"^  (-\S.*?)(?: {2,}|$)", text, re.M)
    positional = text.partition("positional arguments:")[2].partition("\n\n")[0]
    return set(OPTION.findall(" ".join([usage, *headings]))), set(re.findall(r"^ {4}([a-z][\w-]*)", positional, re.M))


def documented(page: str) -> tuple[set[str], set[str]]:
    """The options a man page names in its SYNOPSIS and in its .TP headings (an item's first
    line), and the subcommands headed in its COMMANDS section; prose mentioning other
    programs' options (xen-create-image --dist) does not count."""
    text = re.sub(r"\\f[BIRP]", "", (MAN / page).read_text()).replace("\\-", "-")
    options, commands, section, heading = set(), set(), "", False
    for line in text.splitlines():
        if line.startswith(".SH "):
            section = line[4:].strip('"')
        elif line == ".TP":
            heading = True
            continue
        elif section == "SYNOPSIS" or heading:
            options |= set(OPTION.findall(line))
            if heading and section == "COMMANDS":
                commands.add(line.split()[1].strip('"'))
        heading = False
    return options, commands


@pytest.mark.parametrize("page", PAGES)
def test_man_page_names_what_help_offers(page):
    prog = page.removesuffix(".8")
    options, commands = offered(helps(prog))
    for sub in sorted(commands):
        options |= offered(helps(prog, sub))[0]
    doc_options, doc_commands = documented(page)
    assert sorted(options - doc_options) == [], f"in `{prog} --help`, missing from man/{page}"
    assert sorted(doc_options - options) == [], f"in man/{page}, not offered by `{prog} --help`"
    assert sorted(commands ^ doc_commands) == [], f"subcommands of `{prog} --help` and man/{page} differ"
