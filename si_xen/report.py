"""Talking to the admin: xen-create-image-like steps, warnings, and a log per VM.

The per-VM log gets everything: what the admin saw, and each command proc.py ran with its
exit status, duration and stderr. ``--verbose`` shows those commands on the terminal too.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager

_LOGGER = logging.getLogger("si_xen")


class _Commands(logging.Filter):
    def filter(self, record):
        return record.name == "si_xen.proc"


class Reporter:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream=None):
        self.quiet, self.verbose = quiet, verbose
        self.out = stream or sys.stdout
        self.log = None
        self.log_path: str | None = None
        self._lines: list[str] = []  # kept until the log file can be opened
        self._handlers: list[logging.Handler] = []
        if verbose and not quiet:
            h = logging.StreamHandler(self.out)
            h.addFilter(_Commands())
            h.setFormatter(logging.Formatter("  %(message)s"))
            self._attach(h)

    def _attach(self, h: logging.Handler) -> None:
        _LOGGER.setLevel(logging.INFO)
        _LOGGER.addHandler(h)
        self._handlers.append(h)

    def open_log(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        self.log_path = path
        self.log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
        for line in self._lines:
            self.log.write(line + "\n")
        self._lines.clear()
        self.log.flush()
        h = logging.StreamHandler(self.log)
        h.addFilter(_Commands())
        h.setFormatter(logging.Formatter("%(asctime)s   %(message)s", "%H:%M:%S"))
        self._attach(h)

    def close(self) -> None:
        for h in self._handlers:
            _LOGGER.removeHandler(h)
        self._handlers.clear()
        if self.log:
            self.log.close()
            self.log = None

    def _record(self, text: str) -> None:
        for line in text.splitlines() or [""]:
            stamped = f"{time.strftime('%H:%M:%S')} {line}"
            if self.log:
                self.log.write(stamped + "\n")
                self.log.flush()
            else:
                self._lines.append(stamped)

    def say(self, text: str = "") -> None:
        self._record(text)
        if not self.quiet:
            print(text, file=self.out, flush=True)

    def detail(self, text: str) -> None:
        self._record(text)
        if self.verbose and not self.quiet:
            print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        self._record("WARNING: " + text)
        print(f"WARNING: {text}", file=sys.stderr, flush=True)

    def fixup_line(self, text: str) -> None:
        """A fixup's line: its warnings are the admin's to see, its changes the log's."""
        if text.startswith("WARNING: "):
            self.warn(text[len("WARNING: "):])
        else:
            self.detail(text)

    @contextmanager
    def step(self, what: str):
        self.say(what)
        t = time.monotonic()
        yield
        self.detail(f"  ({time.monotonic() - t:.2f} s)")
        self.say("Done")

    def progress(self, line: str) -> None:
        """rsync --info=progress2 lines, redrawn in place on a terminal."""
        if self.verbose:
            self._record(line.strip())
        if not self.quiet and self.out.isatty():
            print("\r  " + line.strip()[:70].ljust(70), end="", file=self.out, flush=True)

    def end_progress(self) -> None:
        if not self.quiet and self.out.isatty():
            print("\r" + " " * 74 + "\r", end="", file=self.out, flush=True)
