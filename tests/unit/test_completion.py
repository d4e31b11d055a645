"""The bash completion (etc/bash-completion/si-xen) offers exactly the commands' options."""

from __future__ import annotations

import argparse
import os
import re

import pytest

from si_xen import plan, request
from si_xen.cli import getxenimage, lsxenvm, mkxenvm, rmxenvm, updatexenvm, xenhooks

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "etc", "bash-completion", "si-xen")


def script_lists() -> dict[str, set[str]]:
    """The script's word lists: _NAME='word word ...'."""
    with open(SCRIPT) as f:
        return {m[1]: set(m[2].split()) for m in re.finditer(r"^_(\w+)='([^']*)'$", f.read(), re.M)}


def options(p: argparse.ArgumentParser) -> tuple[set[str], set[str]]:
    """(options without a value, options with one) of a parser."""
    flags, args = set(), set()
    for a in p._actions:
        (flags if a.nargs == 0 else args).update(a.option_strings)
    return flags, args


def parsers():
    for mod in (mkxenvm, lsxenvm, rmxenvm, updatexenvm, getxenimage, xenhooks):
        yield mod.PROG, mod.build_parser()
    sub = next(a for a in xenhooks.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        yield f"si_xenhooks_{name.replace('-', '_')}", p


@pytest.mark.parametrize("key,p", list(parsers()), ids=lambda v: v if isinstance(v, str) else "")
def test_option_lists_match_the_parser(key, p):
    lists = script_lists()
    flags, args = options(p)
    assert lists.get(f"{key}_flags", set()) == flags
    assert lists.get(f"{key}_args", set()) == args


def test_subcommands_and_values_match_si_xen():
    lists = script_lists()
    sub = next(a for a in xenhooks.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert lists["si_xenhooks_commands"] == set(sub.choices)
    assert lists["si_mkxenvm_fs"] == set(plan.FILESYSTEMS)
    assert lists["si_mkxenvm_type"] == set(plan.TYPES)
    assert lists["si_mkxenvm_boot"] == set(plan.BOOT_MODES)
    assert lists["si_mkxenvm_cloud_init"] == set(request.CLOUD_INIT)
