"""System tier fixtures: the testbed's prerequisites, the test image, si-xen's Debian package, timings."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_IMAGE, need_tools, require
from tests.system import harness, testbed
from tests.system.harness import TIMINGS, record

REPO = Path(__file__).resolve().parents[2]
IMAGE = Path(os.environ.get("SI_XEN_TEST_IMAGE", TEST_IMAGE))


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.section("system tier timings (s)")
        for what, s in TIMINGS:
            terminalreporter.write_line(f"{what:40s} {s:7.1f}")


@pytest.fixture(scope="session")
def testbed_ready():
    require(os.geteuid() == 0, "the system tier needs root")
    need_tools("qemu-system-x86_64", "debootstrap", "mkfs.ext4")
    t = time.monotonic()
    build = testbed.dom0(rebuild_log=lambda msg: print(msg))
    record("dom0 build (0 = cached)", time.monotonic() - t)
    return build


@pytest.fixture(scope="session")
def image_disk(testbed_ready):
    """The Debian 12 test image (built by tests/images/mkimage-debian12 when missing) as a disk."""
    t = time.monotonic()
    out = subprocess.run([str(REPO / "tests/images/mkimage-debian12"), str(IMAGE)], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"test image build failed:\n{out.stderr[-2000:]}")
    disk = testbed.image_disk(IMAGE, slim=True)
    record("test image + its disk", time.monotonic() - t)
    return disk


@pytest.fixture(scope="session")
def payload(tmp_path_factory, testbed_ready):
    """A payload directory: si-xen's Debian package built from this work tree, and the dom0-side scripts."""
    return harness.payload(tmp_path_factory.mktemp("payload"))
