"""The plain-Linux QEMU run starts with the session, beside the host tiers; the Xen run after, alone.

Measured on 2026-12-03 (fresh clones, this machine kind): the unit and integration tiers keep
about one of the two cores busy, and the plain-Linux run (LVM, thin pools, SIGKILL recovery: no
guests, only our budgets) is plain CPU work, so it runs from the end of collection while the host
tiers run, and its tests, sorted among the last, wait for it. The Xen run's guests are another
matter: beside the host tiers they booted 1.5-2.5x slower than alone (PV login 117 s, pygrub
108 s; PVH triple-faulted four times). So the Xen run starts only when the host tiers and every
background run are done (`Runs.run_alone`): its guests have the machine to themselves, as their
own timeouts (systemd's 90 s device wait) need. Each run's console goes to its own file.

Every run is a process of its own, forked from pytest's: what a test patches in pytest's process
(the unit tier replaces `os.fork` and `subprocess.Popen._execute_child`, pytest-subprocess replaces
`Popen`, a test may fake a clock) never reaches a run. On 2026-12-04 a run in a thread died with
`StopIteration` from a unit test's fake `time.monotonic` (issue 25). The run's result, its error
and its timings come back over a pipe.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

XEN_PRIORITY = -5  # the Xen run's QEMU (and its session's autogroup): first on the CPU
# What a run measured ("what", seconds), closing pytest's report; a run's own come back with its result.
TIMINGS: list[tuple[str, float]] = []
_FORK = multiprocessing.get_context("fork")  # the run gets the session's state as it is at its start


class RunFailed(RuntimeError):
    """A run's error, as its process reported it (the traceback is in its console file)."""


class RunSkipped(RuntimeError):
    """A run that skipped (a prerequisite missing outside CI): pytest's Skipped does not pickle."""


def _die_with_the_session() -> None:
    """In a run's process: SIGTERM when pytest's process dies (whatever kills it), and SIGTERM
    raised as an exception, so the run's own clean-up (QEMU killed, mounts undone) happens."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG

    def stop(signum, frame):
        raise KeyboardInterrupt(f"system run stopped by signal {signum}")
    signal.signal(signal.SIGTERM, stop)


@dataclass
class Context:
    """What a run gets: its work directory, a stop request, and a line sink for its console."""
    work: Path
    cancel: threading.Event
    console: Callable[[str], None]


@dataclass
class Job:
    name: str
    fn: Callable[[Context], object]  # returns the run's result (picklable); may raise
    work: Path
    cancel: threading.Event = field(default_factory=_FORK.Event)  # set in pytest's process, seen in the run's
    result: object = None
    error: BaseException | None = None
    seconds: float = 0.0
    proc: multiprocessing.process.BaseProcess | None = None
    _pipe: object = None
    _done: bool = False

    @property
    def console_path(self) -> Path:
        return self.work / "console.live"

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)  # before start() returns: its console file's home
        self._pipe, sender = _FORK.Pipe(duplex=False)
        # daemon: one still running when pytest exits is terminated, never waited for
        self.proc = _FORK.Process(target=self._child, args=(sender, os.getpid()), name=f"system-{self.name}",
                                  daemon=True)
        self.proc.start()
        sender.close()

    def _child(self, sender, session: int) -> None:
        """In the run's own process: run, then send what the session needs back."""
        _die_with_the_session()
        if os.getppid() != session:  # pytest died before the line above took effect
            return
        known = len(TIMINGS)
        self.run()
        error = self.error
        if isinstance(error, pytest.skip.Exception):
            error = RunSkipped(str(error.msg))
        elif error is not None:
            error = RunFailed(f"the {self.name} run failed: {type(error).__name__}: {error}"
                              f" (traceback in {self.console_path})")
        try:
            payload = pickle.dumps((self.result, error, self.seconds, TIMINGS[known:]))
        except Exception as e:  # noqa: BLE001 - an unpicklable result is the run's error
            payload = pickle.dumps((None, RunFailed(f"the {self.name} run's result: {e}"), self.seconds, []))
        sender.send_bytes(payload)
        sender.close()

    def run(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        with open(self.console_path, "a", buffering=1) as out:
            def console(line: str) -> None:
                out.write(line + "\n")
            try:
                self.result = self.fn(Context(self.work, self.cancel, console))
            except BaseException as e:  # noqa: BLE001 - handed to the tests that wait for it
                self.error = e
                out.write("".join(traceback.format_exception(e)))
        self.seconds = time.monotonic() - t

    def _collect(self, timeout: float | None = None) -> None:
        """Take the run's answer once its process sends it (or dies without one)."""
        if self._done or self.proc is None:
            return
        end = None if timeout is None else time.monotonic() + timeout
        while not self._pipe.poll(1):
            if not self.proc.is_alive():
                break  # a dead writer makes the pipe readable (EOF): handled below
            if end is not None and time.monotonic() > end:
                return
        try:
            self.result, self.error, self.seconds, timings = pickle.loads(self._pipe.recv_bytes())
        except (EOFError, OSError, pickle.UnpicklingError, AttributeError) as e:  # died before or mid-send
            self.error = RunFailed(f"the {self.name} run's process ended without an answer ({type(e).__name__}; "
                                   f"exit {self.proc.exitcode}; its console: {self.console_path})")
            timings = []
        self._done = True
        TIMINGS.extend(timings)
        self.proc.join()

    def wait(self) -> object:
        """The run's result, once it is done; its error raised here, in the test that waits."""
        self._collect()
        if isinstance(self.error, RunSkipped):
            pytest.skip(str(self.error))
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self, timeout: float = 600) -> None:
        """Ask the run to end (QEMU is killed by pid, mounts undone) and wait for it to do so."""
        self.cancel.set()
        if self.proc is None:
            return
        self._collect(timeout)
        if self.proc.is_alive():  # it did not end in time: SIGTERM runs its clean-up, then SIGKILL
            self.proc.terminate()
            self.proc.join(60)
            if self.proc.is_alive():  # its QEMU dies with it (PR_SET_PDEATHSIG)
                self.proc.kill()
                self.proc.join()


class Runs:
    """The session's background runs, by name."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}

    def start(self, specs: dict[str, Callable[[Context], object]], base: Path) -> list[Job]:
        started = []
        for name, fn in specs.items():
            if name not in self.jobs:
                self.jobs[name] = job = Job(name, fn, base / name)
                job.start()
                started.append(job)
        return started

    def wait(self, name: str) -> object:
        if name not in self.jobs:
            raise RuntimeError(f"system run {name} was not started at collection (no BACKGROUND_RUN?)")
        return self.jobs[name].wait()

    def run_alone(self, name: str, fn: Callable[[Context], object], base: Path) -> object:
        """Run `fn` now, in a process of its own, once every background run has ended: it has the machine."""
        for job in self.jobs.values():
            job._collect()
        if name not in self.jobs:
            self.jobs[name] = job = Job(name, fn, base / name)
            job.start()
        return self.jobs[name].wait()

    def stop(self) -> None:
        for job in self.jobs.values():
            try:
                job.stop()
            except Exception as e:  # noqa: BLE001 - the other runs must still be stopped
                print(f"system tier: stopping the {job.name} run: {e}")


RUNS = Runs()


class Once:
    """A value computed once per process, by whichever thread asks first (with its arguments); the
    others wait for it and get the same value, or the same error. Runs are processes of their own:
    each computes its own (the builds behind it are cached, so a second run only checks them and
    builds si-xen's package again, ~10 s)."""

    def __init__(self, fn: Callable[..., object]) -> None:
        self.fn, self.lock, self.done, self.value, self.error = fn, threading.Lock(), False, None, None

    def __call__(self, *args) -> object:
        with self.lock:
            if not self.done:
                try:
                    self.value = self.fn(*args)
                except BaseException as e:  # noqa: BLE001 - every caller gets the same error
                    self.error = e
                self.done = True
        if self.error is not None:
            raise self.error
        return self.value
