"""Undo what a deploy did when it fails or is interrupted (SIGINT, SIGTERM, SIGHUP)."""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager

log = logging.getLogger("si_xen.rollback")


class Interrupted(BaseException):
    """A terminating signal arrived; unwinds like KeyboardInterrupt so undo runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Undo:
    """A stack of undo actions, run newest first; a failing action does not stop the rest."""

    def __init__(self):
        self._stack: list[tuple[str, object, tuple]] = []

    def push(self, what: str, func, *args) -> None:
        self._stack.append((what, func, args))

    def pop_all(self) -> list[str]:
        """Run every undo action; return the descriptions of those that failed."""
        failed = []
        while self._stack:
            what, func, args = self._stack.pop()
            try:
                func(*args)
            except Exception as e:  # keep undoing: one stuck mount must not leak the rest
                log.warning("undo %s failed: %s", what, e)
                failed.append(f"{what}: {e}")
        return failed

    def forget(self) -> None:
        """Success: keep what was made."""
        self._stack.clear()


SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextmanager
def critical():
    """Hold signals while something is made and its undo registered: an interrupt between
    the two would leak it. Held signals are delivered (and raise) on leaving."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def signals_raise():
    """Turn SIGTERM/SIGHUP into an exception so ``finally`` and undo blocks run."""

    def handler(signum, _frame):
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
