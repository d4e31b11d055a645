"""Usage errors in the house style: one FATAL line naming the problem, the fix and --help; exit 2."""

import argparse

import pytest

from si_xen.cli import common, lsxenvm, mkxenvm, rmxenvm, xenhooks
from si_xen.errors import UsageError

MAINS = {"si_mkxenvm": mkxenvm.main, "si_lsxenvm": lsxenvm.main, "si_rmxenvm": rmxenvm.main,
         "si_xenhooks": xenhooks.main}


def run(main, argv):
    try:
        return main(argv)
    except SystemExit as e:  # the si_*vm mains exit; si_xenhooks' returns
        return e.code


CASES = [
    ("si_mkxenvm", ["img", "--swap", "-5M"],
     "FATAL: --swap needs a value (give it one; a value starting with '-' goes as --swap=VALUE; "
     "see si_mkxenvm --help)"),
    ("si_mkxenvm", ["img", "--bogus"], "FATAL: unknown option --bogus (check the spelling; see si_mkxenvm --help)"),
    ("si_mkxenvm", ["img", "other"], "FATAL: unexpected argument other (check the spelling; see si_mkxenvm --help)"),
    ("si_mkxenvm", ["img", "--dhcp=yes"], "FATAL: --dhcp takes no value (drop '=yes'; see si_mkxenvm --help)"),
    ("si_mkxenvm", ["img", "--s", "1"], "FATAL: ambiguous option: --s could match --server, --ssh-user, --size, --swap, --start, "
     "--skip-fixups (spell the option out; see si_mkxenvm --help)"),
    ("si_mkxenvm", ["img", "--hostname"], "FATAL: --hostname needs a value"),
    ("si_rmxenvm", [], "FATAL: missing NAME (give NAME; see si_rmxenvm --help)"),
    ("si_rmxenvm", ["web01", "-x"], "FATAL: unknown option -x (check the spelling; see si_rmxenvm --help)"),
    ("si_lsxenvm", ["--jsn"], "FATAL: unknown option --jsn (check the spelling; see si_lsxenvm --help)"),
    ("si_xenhooks", ["bogus"], "FATAL: invalid COMMAND 'bogus' (use one of: list, run, install-xen-tools, "
     "uninstall-xen-tools, install-ganeti-os, ganeti-variants; see si_xenhooks --help)"),
    ("si_xenhooks", ["run"], "FATAL: missing PREFIX (give PREFIX; see si_xenhooks run --help)"),
]


@pytest.mark.parametrize("prog,argv,line", CASES)
def test_usage_error_is_one_fatal_line_and_exit_2(capsys, prog, argv, line):
    assert run(MAINS[prog], argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "usage:" not in err
    assert err.startswith(line)


def test_help_and_version_still_exit_0(capsys):
    assert run(mkxenvm.main, ["--version"]) == 0
    assert capsys.readouterr().out.startswith("si_mkxenvm (part of ")
    assert run(mkxenvm.main, ["--help"]) == 0
    assert "usage: si_mkxenvm" in capsys.readouterr().out


def test_converter_errors_name_the_option():
    p = common.parser("si_x", "test")
    p.add_argument("--count", type=int)
    with pytest.raises(UsageError, match=r"^invalid --count 'many' \(give a value of type int; see si_x --help\)$"):
        p.parse_args(["--count", "many"])


def test_unknown_argparse_messages_pass_through():
    assert common.usage_problem("argument -y/--yes: something new") == ("--yes: something new", "check the command line")
    assert common.usage_problem("odd")[0] == "odd"


def test_subparsers_inherit_the_style():
    sub = common.parser("si_x", "t").add_subparsers()
    assert isinstance(sub.add_parser("y"), common.Parser) and issubclass(common.Parser, argparse.ArgumentParser)
