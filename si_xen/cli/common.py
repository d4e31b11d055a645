"""What every si_* command shares: banner, FATAL reporting, root check, exit codes."""

from __future__ import annotations

import argparse
import os
import re
import sys

from .. import PROJECT, __version__, proc
from ..errors import Fatal, UsageError
from ..guestfs import GuestPathError
from ..rollback import Interrupted

# The EXIT STATUS of every si_* page; a command adds its own cases before it.
EXIT_STATUS = ("0 on success; 1 with one FATAL: line naming the problem and its fix; 2 (one FATAL: line too)\n"
               "for a command line it cannot parse; 130 when interrupted (what was made so far is removed).")
EPILOG = "Download, report bugs, and make suggestions at:\nhttps://github.com/si-xen/si-xen"


def usage_problem(message: str) -> tuple[str, str]:
    """argparse's error message as (problem, fix), in the words of the other FATAL lines."""
    if m := re.fullmatch(r"argument (\S+): (.*)", message):
        opt, what = m[1].split("/")[-1], m[2]  # "-y/--yes": the long name
        if what == "expected one argument":
            return f"{opt} needs a value", f"give it one; a value starting with '-' goes as {opt}=VALUE"
        if m := re.fullmatch(r"ignored explicit argument '(.*)'", what):
            return f"{opt} takes no value", f"drop '={m[1]}'"
        if m := re.fullmatch(r"invalid choice: (\S+) \(choose from (.*)\)", what):
            return f"invalid {opt} {m[1]}", f"use one of: {m[2].replace(chr(39), '')}"
        if m := re.fullmatch(r"invalid (\S+) value: (.*)", what):
            return f"invalid {opt} {m[2]}", f"give a value of type {m[1]}"
        return f"{opt}: {what}", "check the command line"
    if m := re.fullmatch(r"unrecognized arguments: (.*)", message):
        words = m[1].split()
        opts = [w for w in words if w.startswith("-")]
        what = f"unknown option {' '.join(opts)}" if opts else f"unexpected argument {' '.join(words)}"
        return what, "check the spelling"
    if m := re.fullmatch(r"the following arguments are required: (.*)", message):
        return f"missing {m[1]}", f"give {m[1]}"
    if message.startswith("ambiguous option"):
        return message, "spell the option out"
    return message, "check the command line"


class Parser(argparse.ArgumentParser):
    """argparse with errors in the house style: one FATAL line and exit 2, no usage block."""

    def error(self, message: str):
        problem, fix = usage_problem(message)
        raise UsageError(problem, f"{fix}; see {self.prog} --help")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        description=f"{prog} (part of {PROJECT}) v{__version__}\n\n{description}",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=True,
    )
    p.add_argument("--version", action="version", version=f"{prog} (part of {PROJECT}) v{__version__}")
    return p


def need_root(prog: str) -> None:
    if os.geteuid() != 0:
        raise Fatal(f"{prog} must be run as root", f"run it with sudo {prog} ...")


def run_main(prog: str, func, argv=None) -> int:
    """Run a command body; turn every expected failure into one FATAL line and an exit code."""
    try:
        return func(argv) or 0
    except Fatal as e:
        print(f"FATAL: {e}", file=sys.stderr)
        return e.code
    except proc.ProcError as e:
        print(f"FATAL: {e} (see the log for details)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        what = getattr(e, "args", [""])[0] if isinstance(e, Interrupted) else "SIGINT"
        left = getattr(e, "leftovers", None)
        done = "some of what was made could not be removed (see the WARNINGs)" if left else "everything made so far was removed"
        if kept := getattr(e, "kept", None):  # a batch: the VMs finished before stay
            rest = "some of the unfinished ones' work could not be removed (see the WARNINGs)" if left else \
                "the unfinished ones' work was removed"
            made = f"VM {kept[0]} was made and is kept" if len(kept) == 1 else \
                f"VMs {', '.join(kept)} were made and are kept"
            done = f"{made} (si_lsxenvm lists them); {rest}"
        print(f"FATAL: interrupted by {what}; {done}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except GuestPathError as e:  # a backstop: the image's readers say which image and why
        print(f"FATAL: cannot use guest path {e.gpath} in {e.root}: {e.reason} (fix or remove it there)", file=sys.stderr)
        return 1
    except OSError as e:  # a backstop too: a file that a step could not read or write
        where = f": {os.fsdecode(e.filename)}" if e.filename else ""
        print(f"FATAL: {e.strerror or e}{where} (check that path; the log has the steps done)", file=sys.stderr)
        return 1


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise Fatal(f"{question} needs confirmation", "add --yes to confirm without a terminal")
    return input(f"{question} ([y]/n): ").strip().lower() in ("", "y", "yes")
