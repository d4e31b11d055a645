"""The one way si-xen runs programs: argv lists, never a shell (a string argv is refused).

Built on :mod:`subprocess` so unit tests can fake every call with pytest-subprocess. The one
exec elsewhere is storage/view.py's helper, itself started through here (under unshare), which
becomes the command it masks the image for; :class:`Ahead` forks Python, runs no program.
"""

from __future__ import annotations

import logging
import os
import pickle
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger("si_xen.proc")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def _argv(argv: Sequence[str]) -> tuple[str, ...]:
    """``argv`` as a tuple of str; a str would become one argument per character."""
    if isinstance(argv, (str, bytes)):
        raise TypeError(f"argv must be a list of arguments, not a string: {argv!r}")
    out = tuple(str(a) for a in argv)
    if not out:
        raise TypeError("argv must be a non-empty list")
    return out


def _started(verb: str, argv: Sequence[str]) -> float:
    log.info("$ %s%s", shlex.join(argv), "" if verb == "run" else f"   ({verb})")
    return time.monotonic()


def _ended(res: Result, t0: float) -> None:
    """Every command's outcome in the per-VM log (report.py): status, duration, whole stderr."""
    log.info("  exit %d after %.2f s", res.returncode, time.monotonic() - t0)
    if res.stderr.strip():
        log.info("  stderr:\n%s", "\n".join("    " + line for line in res.stderr.rstrip().splitlines()))


class ProcError(Exception):
    """A program exited with a code not in ``ok``."""

    def __init__(self, result: Result):
        self.result = result
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        msg = f"{result.argv[0]} exited {result.returncode}"
        super().__init__(msg + (": " + " | ".join(tail) if tail else ""))


def run(
    argv: Sequence[str],
    *,
    ok: Iterable[int] = (0,),
    input: str | bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    capture: bool = True,
    stdin=None,
    stdout=None,
) -> Result:
    """Run ``argv``; raise :class:`ProcError` unless its exit code is in ``ok``."""
    argv = _argv(argv)
    t0 = _started("run", argv)
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    text = not isinstance(input, bytes)
    if stdin is not None or stdout is not None:  # file objects: data that must not sit in memory
        cp = subprocess.run(list(argv), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=full_env,
                            cwd=cwd, timeout=timeout, check=False)
        res = Result(argv, cp.returncode, "", cp.stderr.decode(errors="replace"))
        _ended(res, t0)
        if cp.returncode not in tuple(ok):
            raise ProcError(res)
        return res
    cp = subprocess.run(
        list(argv),
        input=input,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        text=text,
        check=False,
    )
    out = cp.stdout or ""
    err = cp.stderr or ""
    if isinstance(out, bytes):
        out, err = out.decode(errors="replace"), err.decode(errors="replace")
    res = Result(argv, cp.returncode, out, err)
    _ended(res, t0)
    if cp.returncode not in tuple(ok):
        raise ProcError(res)
    return res


def stream(argv: Sequence[str], on_line, *, ok: Iterable[int] = (0,)) -> Result:
    """Run ``argv`` calling ``on_line`` for each stdout line (``\r`` ends a line too, for
    progress meters). The child is killed if we are interrupted, so no copy outlives us."""
    argv = _argv(argv)
    t0 = _started("stream", argv)
    # Own process group: rsync forks helpers, and all of them must die before we unmount.
    p = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        buf = b""
        while True:
            chunk = p.stdout.read1(65536) if hasattr(p.stdout, "read1") else p.stdout.read()
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                if line.strip():
                    on_line(line.decode(errors="replace"))
        err = p.stderr.read().decode(errors="replace")
        rc = p.wait()
    except BaseException:
        _kill_group(p)
        p.wait()
        raise
    res = Result(argv, rc, "", err)
    _ended(res, t0)
    if rc not in tuple(ok):
        raise ProcError(res)
    return res


@contextmanager
def reading(argv: Sequence[str], stdin) -> Iterator:
    """Run ``argv`` reading ``stdin`` (a file); yield the process, whose stdout the caller
    reads as a stream (large outputs never sit in memory). Its ``returncode`` is set after."""
    argv = _argv(argv)
    _started("reading", argv)
    p = subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        yield p
    finally:
        p.stdout.close()
        p.wait()


def start(argv: Sequence[str]) -> subprocess.Popen:
    """Start ``argv`` in the background (output discarded); the caller waits for it."""
    argv = _argv(argv)
    _started("background", argv)
    return subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def attached(argv: Sequence[str]) -> subprocess.Popen:
    """Start ``argv`` on our terminal (stdin, stdout and stderr ours): an interactive program,
    such as a console, that the caller waits for and may stop."""
    argv = _argv(argv)
    _started("attached", argv)
    return subprocess.Popen(list(argv))


class Begun:
    """``argv`` running with its output captured while we go on: ``result()`` waits as run()
    would, ``stop()`` ends it (work begun on a guess that turned out unneeded)."""

    def __init__(self, argv: Sequence[str], ok: Iterable[int] = (0,), env: Mapping[str, str] | None = None):
        self.argv, self.ok = _argv(argv), tuple(ok)
        self.t0 = _started("begun", self.argv)
        # Own process group: rsync forks a helper that holds the pipes too, and must end with it.
        self.p = subprocess.Popen(list(self.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True,
                                  env=None if env is None else {**os.environ, **env})

    @property
    def waited(self) -> bool:
        return self.p.returncode is not None

    def result(self) -> Result:
        try:
            out, err = self.p.communicate()
        except BaseException:
            self.stop()
            raise
        res = Result(self.argv, self.p.returncode, out or "", err or "")
        _ended(res, self.t0)
        if res.returncode not in self.ok:
            raise ProcError(res)
        return res

    def stop(self) -> None:
        if not self.waited:
            _kill_group(self.p)
            self.p.communicate()


def _kill_group(p: subprocess.Popen) -> None:
    try:
        if p.pid > 0:  # a faked process (tests) has pid 0: killpg(0) would be our own group
            os.killpg(p.pid, signal.SIGKILL)
        else:
            p.kill()
    except ProcessLookupError:
        pass


def in_mount_namespace(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """(argv, env) to run ``python3 -m MODULE ARGS`` in a private mount namespace of its own: its
    mounts are never seen outside and go with it, even after a SIGKILL. env's PYTHONPATH names
    where si_xen is imported from (Ganeti's scripts put it on sys.path themselves)."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {"PYTHONPATH": os.pathsep.join(filter(None, (top, os.environ.get("PYTHONPATH"))))}
    return ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", module, *args], env


def which(program: str) -> str | None:
    """Full path of ``program`` on PATH (sbin dirs included, as root expects)."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(program, path=path)


class Ahead:
    """``fn(*args)`` computed in a forked child, on the other core, while we go on: for work
    that is pure reading (an image walk) and would otherwise sit on the critical path.
    ``result()`` is its value, or None if it failed (the caller then does the work itself)."""

    def __init__(self, fn, *args):
        self.out = tempfile.TemporaryFile()
        self.pid = os.fork()
        if self.pid == 0:  # the child: no handler, finally or atexit of ours may run here
            code = 1
            try:
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                pickle.dump(fn(*args), self.out)
                self.out.flush()
                code = 0
            finally:
                os._exit(code)
        self.status: int | None = None

    def result(self):
        if self.status is None:
            self.status = os.waitpid(self.pid, 0)[1]
        if self.status != 0:
            return None
        self.out.seek(0)
        try:
            return pickle.load(self.out)
        except (EOFError, pickle.UnpicklingError):
            return None
        finally:
            self.out.close()

    def close(self) -> None:
        """Stop it if it still runs (an error or interrupt before its result was wanted)."""
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.status = os.waitpid(self.pid, 0)[1]
        self.out.close()
