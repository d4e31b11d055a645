"""The man pages are generated from the parsers: the checked-in ones must be current. That every
option of the installed commands' --help is in their man page (and no other) is checked by
tests/integration/test_installed_commands.py, which runs them."""

import os

import pytest

from si_xen.cli import manpage

MAN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "man")


@pytest.mark.parametrize("cmd", manpage.COMMANDS)
def test_man_page_matches_help(cmd):
    name, text = manpage.page(cmd)
    with open(os.path.join(MAN, name)) as f:
        assert f.read() == text, f"regenerate with: python3 -m si_xen.cli.manpage man ({name} is stale)"


def test_ganeti_page_matches_the_os_parameters():
    from si_xen.ganeti import manpage as ganeti

    with open(os.path.join(MAN, "si-xen-ganeti.7")) as f:
        assert f.read() == ganeti.render(), "regenerate with: python3 -m si_xen.cli.manpage man"
