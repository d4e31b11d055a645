"""What every si_* command shares: banner, FATAL reporting, root check, exit codes."""

from __future__ import annotations

import argparse
import os
import sys

from .. import PROJECT, __version__, proc
from ..errors import Fatal
from ..rollback import Interrupted

EPILOG = "Download, report bugs, and make suggestions at:\nhttps://github.com/si-xen/si-xen"


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
        return 1
    except proc.ProcError as e:
        print(f"FATAL: {e} (see the log for details)", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        what = getattr(e, "args", [""])[0] if isinstance(e, Interrupted) else "SIGINT"
        left = getattr(e, "leftovers", None)
        done = "some of what was made could not be removed (see the WARNINGs)" if left else "everything made so far was removed"
        print(f"FATAL: interrupted by {what}; {done}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


def confirm(question: str, yes: bool) -> bool:
    if yes:
        return True
    if not sys.stdin.isatty():
        raise Fatal(f"{question} needs confirmation", "add --yes to confirm without a terminal")
    return input(f"{question} ([y]/n): ").strip().lower() in ("", "y", "yes")
