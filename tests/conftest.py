"""Shared test plumbing: tiers, and the rule that a tier which cannot run fails loudly in CI."""

from __future__ import annotations

import os
import shutil
import time

import pytest

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, why: str) -> None:
    """Skip locally when a tier's prerequisite is missing; fail in CI, never skip silently."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {why}")
    pytest.skip(why)


# The time module's clocks, as the session started: a test that swaps one swaps it for every thread
# of pytest's process (a system run in a thread once died of a unit test's fake clock, issue 25).
# Fake the name in the module under test instead (`from time import monotonic` there).
CLOCKS = {name: getattr(time, name) for name in ("monotonic", "monotonic_ns", "time", "time_ns", "perf_counter",
                                                 "sleep")}


def swapped_clocks() -> list[str]:
    return [f"time.{name}" for name, fn in CLOCKS.items() if getattr(time, name) is not fn]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    result = yield
    if swapped := swapped_clocks():
        for name, fn in CLOCKS.items():  # put back, or every later test fails too
            setattr(time, name, fn)
        pytest.fail(f"{item.nodeid} replaced {', '.join(swapped)} for the whole process: fake the clock "
                    "where the code under test names it (e.g. monkeypatch.setattr(module, 'monotonic', ...))")
    return result


@pytest.fixture
def as_root():
    require(os.geteuid() == 0, "needs root")


def need_tools(*names: str) -> None:
    missing = [n for n in names if not shutil.which(n, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    require(not missing, f"missing tools: {' '.join(missing)}")


TEST_IMAGE_BUILDER = os.path.join(os.path.dirname(__file__), "images", "mkimage-debian12")
# Big test artefacts (images, the dom0, disks) live here, outside the work tree.
TEST_CACHE = os.environ.get("SI_XEN_TEST_CACHE", "/var/cache/si-xen-tests")
TEST_IMAGE = os.path.join(TEST_CACHE, "images", "debian12")


@pytest.fixture(scope="session")
def debian12_image():
    """The debootstrap'd Debian 12 image (built once, ~80 s, then cached)."""
    require(os.geteuid() == 0, "building the Debian 12 test image needs root")
    need_tools("debootstrap")
    import subprocess

    subprocess.run([TEST_IMAGE_BUILDER, TEST_IMAGE], check=True, stdout=subprocess.DEVNULL)
    return TEST_IMAGE
