"""Unit tests start no real process: every start fails loudly unless the test is marked
``@pytest.mark.allow_subprocess(reason=...)``. pytest-subprocess's ``fp`` keeps working: its
fakes never start anything (and an unregistered command it lets through hits this guard)."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

# Every way a Python process starts another: subprocess (and what is built on it: os.popen,
# asyncio), fork (multiprocessing, pty, os.spawn*), posix_spawn, exec, system.
OS_STARTS = ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve", "execl", "execle",
             "execlp", "execlpe", "execvp", "execvpe")


class RealProcessInUnitTest(AssertionError):
    pass


def _refuse(what: str):
    def refuse(*args, **kwargs):
        shown = args[1] if what == "subprocess.Popen" and len(args) > 1 else args[:1]
        raise RealProcessInUnitTest(
            f"unit test started a real process ({what} {shown!r}): fake it with the fp fixture, "
            "move the test to tests/integration, or mark it @pytest.mark.allow_subprocess(reason=...)")

    return refuse


@pytest.fixture(autouse=True)
def no_real_processes(request, monkeypatch):
    mark = request.node.get_closest_marker("allow_subprocess")
    if mark is not None:
        if not mark.kwargs.get("reason"):
            pytest.fail("@pytest.mark.allow_subprocess needs a reason=")
        return
    # _execute_child is where Popen really forks: `from subprocess import Popen` aliases
    # are caught too, and fp's FakePopen (which replaces Popen) never gets there.
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("subprocess.Popen"))
    for name in OS_STARTS:
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _refuse(f"os.{name}"))


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path_factory, monkeypatch):
    """The initramfs caches (scans, Xen-sized files) of a test are its own, never the host's
    /var/cache/si-xen, which si_rmxenvm prunes; made only when a test writes there."""
    key = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path_factory.getbasetemp() / "si-xen-cache" / key))
