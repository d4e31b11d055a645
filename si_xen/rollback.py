"""Signals during a deploy: held while a thing is made and journaled, turned into exceptions
so the deploy's rollback runs (SIGINT, SIGTERM, SIGHUP)."""

from __future__ import annotations

import signal
from contextlib import contextmanager


class Interrupted(BaseException):
    """A terminating signal arrived; unwinds like KeyboardInterrupt so undo runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


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
