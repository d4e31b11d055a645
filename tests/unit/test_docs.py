"""The man pages are generated from the parsers: the checked-in ones must be current."""

import os

import pytest

from si_xen.cli import manpage

MAN = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "man")


@pytest.mark.parametrize("cmd", manpage.COMMANDS)
def test_man_page_matches_help(cmd):
    name, text = manpage.page(cmd)
    with open(os.path.join(MAN, name)) as f:
        assert f.read() == text, f"regenerate with: python3 -m si_xen.cli.manpage man ({name} is stale)"


def test_every_option_is_documented():
    from si_xen.cli.mkxenvm import build_parser

    _, text = manpage.page("mkxenvm")
    for action in build_parser()._actions:
        for opt in action.option_strings:
            assert opt.replace("-", "\\-") in text


def test_ganeti_page_matches_the_os_parameters():
    from si_xen.ganeti import manpage as ganeti

    with open(os.path.join(MAN, "si-xen-ganeti.7")) as f:
        assert f.read() == ganeti.render(), "regenerate with: python3 -m si_xen.cli.manpage man"
