"""The system tier's QEMU runs start with the session and run beside the host tiers.

A QEMU run is many minutes of TCG, while the unit and integration tiers keep about one of the
two cores busy. So when the session holds system tests, each test module's run (its
`BACKGROUND_RUN`) starts in a thread of its own as soon as collection ends, and the system
tests, ordered last, wait for their run's result.

Priorities keep the budgets honest: the Xen run's guests have timeouts of their own that do not
follow our calibration (systemd gives up on a device after 90 s), so the Xen run keeps the
first call on the CPU (its QEMU and its session's scheduler autogroup at nice -5: with autogroups,
sessions share the CPU by their group's value), the plain-Linux run takes one emulated CPU at
nice 5, and this process's main thread, which runs the host tiers and every command they start,
drops to nice 10 (within its session: the runs' own threads, which make their disks, keep theirs).
Each run's output goes to its own console file (named in the report).
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HOST_TIERS_NICE = 10  # this process's main thread: the host tiers and what they start
XEN_PRIORITY = -5  # the Xen run's QEMU (and its session's autogroup): first on the CPU
SHARED_PRIORITY = 5  # the plain-Linux run's QEMU: after the Xen run, level with this process


@dataclass
class Context:
    """What a run gets: its work directory, a stop request, and a line sink for its console."""
    work: Path
    cancel: threading.Event
    console: Callable[[str], None]


@dataclass
class Job:
    name: str
    fn: Callable[[Context], object]  # returns the run's result; may raise
    work: Path
    cancel: threading.Event = field(default_factory=threading.Event)
    result: object = None
    error: BaseException | None = None
    seconds: float = 0.0
    thread: threading.Thread | None = None

    @property
    def console_path(self) -> Path:
        return self.work / "console.live"

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.thread = threading.Thread(target=self._run, name=f"system-{self.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
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

    def wait(self) -> object:
        """The run's result, once it is done; its error raised here, in the test that waits."""
        if self.thread is None:
            raise RuntimeError(f"system run {self.name} was never started")
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self, timeout: float = 600) -> None:
        """Ask the run to end (QEMU is killed by pid, mounts undone) and wait for it to do so."""
        self.cancel.set()
        if self.thread is not None:
            self.thread.join(timeout)


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
        if started:
            os.nice(HOST_TIERS_NICE - os.nice(0))  # this thread only (Linux): the runs keep theirs
        return started

    def wait(self, name: str) -> object:
        if name not in self.jobs:
            raise RuntimeError(f"system run {name} was not started at collection (no BACKGROUND_RUN?)")
        return self.jobs[name].wait()

    def stop(self) -> None:
        for job in self.jobs.values():
            job.stop()


RUNS = Runs()


class Once:
    """A value computed once, by whichever thread asks first (with its arguments); the others
    wait for it and get the same value, or the same error."""

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
