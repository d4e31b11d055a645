"""The plain-Linux QEMU run starts with the session, beside the host tiers; the Xen run after, alone.

Measured on 2026-12-03 (fresh clones, this machine kind): the unit and integration tiers keep
about one of the two cores busy, and the plain-Linux run (LVM, thin pools, SIGKILL recovery: no
guests, only our budgets) is plain CPU work, so it runs in a thread from the end of collection
while the host tiers run, and its tests, sorted among the last, wait for it. The Xen run's guests
are another matter: with everything beside them (the Xen QEMU first on the CPU, at nice -5 for
itself and its session's autogroup) they still booted 1.5-2.5x slower than alone (PV login 117 s,
pygrub 108 s; PVH triple-faulted four times) and the whole suite took 29 min instead of 22-25.
So the Xen run starts only when the host tiers and every background run are done
(`Runs.run_alone`): its guests have the machine to themselves, as their own timeouts (systemd's
90 s device wait) need. Each run's console goes to its own file (named in the report).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

XEN_PRIORITY = -5  # the Xen run's QEMU (and its session's autogroup): first on the CPU


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
        self.thread = threading.Thread(target=self.run, name=f"system-{self.name}", daemon=True)
        self.thread.start()

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

    def wait(self) -> object:
        """The run's result, once it is done; its error raised here, in the test that waits."""
        if self.thread is not None:
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
        return started

    def wait(self, name: str) -> object:
        if name not in self.jobs:
            raise RuntimeError(f"system run {name} was not started at collection (no BACKGROUND_RUN?)")
        return self.jobs[name].wait()

    def run_alone(self, name: str, fn: Callable[[Context], object], base: Path) -> object:
        """Run `fn` here and now, once every background run has ended: it has the machine."""
        for job in self.jobs.values():
            if job.thread is not None:
                job.thread.join()
        if name not in self.jobs:
            self.jobs[name] = Job(name, fn, base / name)
            self.jobs[name].run()
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
