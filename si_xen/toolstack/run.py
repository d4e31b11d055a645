"""A toolstack's start and console commands run under our signal handling: the same for every
toolstack (xl, xm, libvirt's virsh), whose argv is all that differs."""

from __future__ import annotations

import signal
import subprocess  # TimeoutExpired only: commands run through proc
import termios

from .. import proc, rollback


def create(argv: list[str], made) -> None:
    """Run the command that makes the domain (``xl create``, ``virsh start``): the domain exists
    once it returns 0, and ``made(signum)`` is called before any handler of the caller's runs
    again: its point of no return (signum: one that came meanwhile, or None). A SIGINT, SIGTERM
    or SIGHUP meanwhile is passed on to the command, whose exit decides: made, or not
    (ProcError; Interrupted when the signal stopped it)."""
    got: list[int] = []
    job = None

    def forward(signum, _frame):
        got.append(signum)
        if job is not None:
            job.p.send_signal(signum)

    with rollback.diverted(forward):
        job = proc.Begun(argv)
        if got:
            job.p.send_signal(got[0])
        try:
            job.result()
        except proc.ProcError:
            if got:
                raise rollback.Interrupted(got[0]) from None
            raise
        made(got[0] if got else None)


def console(argv: list[str]) -> tuple[int, int | None]:
    """Attach our terminal to a domain's console until it ends: detached (Ctrl-]), the domain
    gone, or a SIGINT, SIGTERM or SIGHUP to us, which ends the console only (a second one
    kills it). Returns its exit status and that signal (or None)."""
    got: list[int] = []
    p = None

    def stop(signum, _frame):
        got.append(signum)
        if p is not None:
            p.send_signal(signal.SIGTERM if len(got) == 1 else signal.SIGKILL)

    tty = _tty_state()
    try:
        with rollback.diverted(stop):
            p = proc.attached(argv)
            if got:
                p.terminate()
            rc = p.wait()
    finally:
        _tty_restore(tty)  # a console killed in raw mode would leave the terminal unusable
    return rc, got[0] if got else None


def _tty_state():
    try:
        return termios.tcgetattr(0)
    except (termios.error, OSError, ValueError):
        return None  # not a terminal


def _tty_restore(state) -> None:
    if state is not None:
        try:
            termios.tcsetattr(0, termios.TCSANOW, state)
        except (termios.error, OSError):
            pass  # hung up: no terminal left to restore


def stop(argv: list[str], domains, name: str, timeout: float, monotonic, sleep) -> bool:
    """Ask for a clean shutdown (``argv``), then wait up to ``timeout`` for ``name`` to leave
    ``domains()``; never destroys it. The clock is the caller's (tests fake each toolstack's)."""
    deadline = monotonic() + timeout
    try:
        proc.run(argv, timeout=timeout, ok=(0, 1))
    except subprocess.TimeoutExpired:
        return False
    while name in domains():
        if monotonic() >= deadline:
            return False
        sleep(0.5)
    return True
