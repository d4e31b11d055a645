"""The test caches' builders: exit 0 exactly when the artefact is complete, one FATAL line when
not, and no scratch left behind whether they succeed, fail or are killed (issue 25: a complete
dom0 build exited 1 and left its 1 GB scratch, so every cold run failed).

Their success is proven by every cold run (CI's cache is empty: the system tier's prerequisites
raise on a non-zero exit), and test_lvm.py checks that the builds left no scratch; here, a
mirror that cannot answer makes each builder fail, fast.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TEST_IMAGE_BUILDER, need_tools
from tests.lib import chroot

pytestmark = pytest.mark.integration
MKDOM0 = Path(__file__).resolve().parents[1] / "system" / "mkdom0"
NOWHERE = "http://127.0.0.1:9/debian"  # the discard port: connection refused at once


def scratch(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp." in p.name or p.name.startswith("tmp."))


def mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        return [line.split()[1] for line in f if line.split()[1].startswith(f"{root}/")]


@pytest.fixture
def builders(as_root):
    need_tools("debootstrap")


@pytest.mark.parametrize("builder", ["mkdom0", "mkimage-debian12"])
def test_a_failed_build_is_one_fatal_line_and_leaves_no_scratch(tmp_path, builders, builder):
    argv = [str(MKDOM0), str(tmp_path / "dom0")] if builder == "mkdom0" else \
        [TEST_IMAGE_BUILDER, str(tmp_path / "images" / "debian12")]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, SI_XEN_TEST_MIRROR=NOWHERE))
    assert cp.returncode != 0 and cp.stdout == ""
    lines = cp.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("FATAL: ") and NOWHERE in lines[0], cp.stderr
    log = Path(lines[0].rsplit("log: ", 1)[-1])
    assert log.is_file() and log.stat().st_size > 0, "the failure's log is kept, outside the scratch"
    assert scratch(tmp_path) == [] and mounts_below(tmp_path) == []
    assert not list(tmp_path.rglob(".complete")) and not list(tmp_path.rglob(".si-xen-test-image"))


def test_a_failed_chroot_build_names_the_mirror_and_leaves_no_scratch(tmp_path, builders, monkeypatch):
    monkeypatch.setattr(chroot, "CACHE", tmp_path)
    monkeypatch.setattr(chroot, "MIRROR", NOWHERE)
    with pytest.raises(chroot.ChrootError) as e:
        chroot.pristine("bookworm")
    assert "\n" not in str(e.value) and NOWHERE in str(e.value), str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bookworm.failed.log", "bookworm.lock"]


class SilentMirror:
    """A mirror that accepts connections and never answers: the build hangs in its download."""

    def __enter__(self) -> str:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/debian"

    def __exit__(self, *exc) -> None:
        self.sock.close()


@pytest.mark.parametrize("builder", ["mkdom0", "mkimage-debian12"])
def test_a_killed_build_leaves_no_scratch_and_the_next_one_clears_a_killed_ones(tmp_path, builders, builder):
    cache = tmp_path / ("dom0" if builder == "mkdom0" else "images")
    argv = [str(MKDOM0), str(cache)] if builder == "mkdom0" else [TEST_IMAGE_BUILDER, str(cache / "debian12")]
    with SilentMirror() as mirror:
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                             env=dict(os.environ, SI_XEN_TEST_MIRROR=mirror))
        try:
            end = time.monotonic() + 60
            while not scratch(tmp_path) and time.monotonic() < end:  # debootstrap has begun
                time.sleep(0.1)
            assert scratch(tmp_path), "the build never started"
            time.sleep(0.5)
            os.killpg(p.pid, signal.SIGTERM)  # as ^C or a CI timeout ends it: the whole group
            p.wait(timeout=60)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert p.returncode != 0
    assert scratch(tmp_path) == [] and mounts_below(tmp_path) == []
    # One killed outright (SIGKILL: no trap runs) leaves its scratch; the next build clears it.
    stale = cache / ("tmp.999999" if builder == "mkdom0" else "debian12.tmp.999999") / "root"
    stale.mkdir(parents=True)
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, SI_XEN_TEST_MIRROR=NOWHERE))
    assert cp.returncode != 0 and scratch(tmp_path) == [], cp.stderr
