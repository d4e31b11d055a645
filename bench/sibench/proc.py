"""Children of the benchmark: timed to the synced disk, with the peak RSS of their process tree."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

_libc = ctypes.CDLL(None, use_errno=True)
_current: list[subprocess.Popen] = []  # the child running now (so an interrupt can wait for it)


@dataclass
class Sample:
    seconds: float
    peak_kb: int
    rc: int
    used_bytes: int = 0
    cpu_s: float = 0.0  # user + system time of the command's tree (its waited-for processes)
    phases: dict[str, float] = field(default_factory=dict)  # si_mkxenvm's own step times


def syncfs(path: str) -> None:
    """Flush the filesystem holding path (only that one, unlike sync(2))."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
    finally:
        os.close(fd)


def spawn(argv: list[str], log: str, env: dict | None = None) -> tuple[int, int, float]:
    """Run argv (output appended to log); return its exit code, the peak RSS (KiB) of the largest
    process of its tree and the tree's CPU seconds (wait4 counts the child and its waited-for
    descendants)."""
    with open(log, "ab") as out:
        out.write(("$ " + " ".join(argv) + "\n").encode())
        out.flush()
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    _current.append(p)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    _current.remove(p)
    return p.returncode, usage.ru_maxrss, usage.ru_utime + usage.ru_stime


def timed(steps: list[list[str]], sync_path: str, log: str, env: dict | None = None) -> Sample:
    """Wall time of the steps in order, up to the target filesystem being synced."""
    peak, rc, cpu = 0, 0, 0.0
    t0 = time.perf_counter()
    for argv in steps:
        rc, kb, secs = spawn(argv, log, env)
        peak, cpu = max(peak, kb), cpu + secs
        if rc:
            break
    syncfs(sync_path)
    return Sample(round(time.perf_counter() - t0, 3), peak, rc, cpu_s=round(cpu, 3))


def run(argv: list[str], log: str, env: dict | None = None) -> None:
    """An untimed helper command that must succeed."""
    rc, _, _ = spawn(argv, log, env)
    if rc:
        raise RuntimeError(f"{' '.join(argv)} exited {rc} (see {log_tail(log)})")


def log_tail(log: str, lines: int = 8) -> str:
    try:
        with open(log, errors="replace") as f:
            return " | ".join(line.rstrip() for line in f.readlines()[-lines:])
    except OSError:
        return ""


def stop_children(grace: float = 60.0) -> None:
    """After an interrupt: let the running child finish its own cleanup, then end it (by pid)."""
    for p in list(_current):
        if p.poll() is None:
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        _current.remove(p)


def forward(sig: int) -> None:
    """Pass a signal that reached only the benchmark (SIGTERM, SIGHUP) on to its running child."""
    for p in list(_current):
        if p.poll() is None:
            p.send_signal(sig)
