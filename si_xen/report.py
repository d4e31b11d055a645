"""Talking to the admin: xen-create-image-like steps, warnings, and a log per VM."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager


class Reporter:
    def __init__(self, quiet: bool = False, verbose: bool = False, stream=None):
        self.quiet, self.verbose = quiet, verbose
        self.out = stream or sys.stdout
        self.log = None
        self._lines: list[str] = []  # kept until the log file can be opened

    def open_log(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.log = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the run
        self.log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
        for line in self._lines:
            self.log.write(line + "\n")
        self._lines.clear()
        self.log.flush()

    def close(self) -> None:
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
