"""Signals during a deploy: held while a thing is made and journaled, turned into exceptions
so the deploy's rollback runs (SIGINT, SIGTERM, SIGHUP) — until the domain exists, the point
of no return: from then on a signal is only noted, and the VM stays."""

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


class Guard:
    """A deploy's answer to SIGINT, SIGTERM and SIGHUP: Interrupted (the rollback runs) until
    ``keep()``, once the domain exists; from then on a signal is noted in ``got``, never raised:
    nothing may undo a VM that runs (a dropped ssh session's SIGHUP included)."""

    def __init__(self):
        self.kept = False
        self.got: int | None = None

    def keep(self, got: int | None = None) -> None:
        self.kept = True
        self.got = self.got or got

    def __call__(self, signum, _frame):
        if not self.kept:
            raise Interrupted(signum)
        self.got = self.got or signum


@contextmanager
def diverted(handler):
    """Each of SIGNALS calls ``handler(signum, frame)`` while in the block, except one the
    command was started ignoring (nohup's SIGHUP, a background job's SIGINT): it stays ignored."""
    old = {}
    for s in sorted(SIGNALS):
        if signal.getsignal(s) is not signal.SIG_IGN:
            old[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def signals_raise(guard: Guard | None = None):
    """Turn SIGINT/SIGTERM/SIGHUP into Interrupted so ``finally`` and undo blocks run (until
    ``guard`` keeps what was made)."""
    return diverted(guard or Guard())
