"""The guard of tests/unit/conftest.py: no real process starts in a unit test."""

import multiprocessing
import os
import subprocess

import pytest

from si_xen import proc
from tests.unit.conftest import RealProcessInUnitTest


@pytest.mark.parametrize("start", [
    lambda: subprocess.run(["true"]),
    lambda: proc.run(["true"]),
    lambda: os.system("true"),
    lambda: os.posix_spawnp("true", ["true"], os.environ),
    lambda: os.execvp("true", ["true"]),
    lambda: os.fork(),
    lambda: multiprocessing.get_context("fork").Process(target=print).start(),
])
def test_every_way_to_start_a_process_fails_loudly(start):
    with pytest.raises(RealProcessInUnitTest, match="fake it with the fp fixture"):
        start()


def test_fp_fakes_still_work_and_what_they_let_through_is_refused(fp):
    fp.register(["xl", "list"], stdout="Name ID\n")
    assert proc.run(["xl", "list"]).stdout == "Name ID\n"
    fp.allow_unregistered(True)
    with pytest.raises(RealProcessInUnitTest):
        proc.run(["true"])


@pytest.mark.allow_subprocess(reason="proves the marker lets a real process through")
def test_marked_tests_may_start_processes():
    assert subprocess.run(["true"]).returncode == 0
