"""The system tier's runs live in processes of their own: nothing a test patches reaches them."""

from __future__ import annotations

import time

import pytest

from tests import conftest
from tests.system import background


def _clock_reader(ctx: background.Context) -> dict:
    """A run that waits for the test's signal, then reads the clock the way the testbed does."""
    go = ctx.work / "go"
    while not go.exists() and not ctx.cancel.is_set():
        time.sleep(0.02)
    first = time.monotonic()
    time.sleep(0.05)
    return {"first": first, "second": time.monotonic()}


@pytest.mark.allow_subprocess(reason="a system run is a process of its own (forked), which this proves")
def test_a_clock_patched_in_a_test_is_not_the_clock_a_background_run_reads(tmp_path, monkeypatch):
    runs = background.Runs()
    (job,) = runs.start({"clock": _clock_reader}, tmp_path)
    try:
        with monkeypatch.context() as m:
            m.setattr(time, "monotonic", lambda: 42.0)  # what test_toolstack once did, globally
            m.setattr(time, "sleep", lambda s: (_ for _ in ()).throw(StopIteration))
            (tmp_path / "clock" / "go").touch()
            read = runs.wait("clock")
    finally:
        runs.stop()
    assert job.proc is not None and job.proc.pid != __import__("os").getpid()
    assert read["first"] != 42.0 and read["second"] - read["first"] >= 0.04, read


@pytest.mark.allow_subprocess(reason="a system run is a process of its own (forked)")
def test_a_runs_error_and_timings_come_back_to_the_session(tmp_path):
    def failing(ctx: background.Context) -> None:
        background.TIMINGS.append(("failing: step", 1.5))
        ctx.console("about to fail")
        raise ValueError("no dom0")

    runs = background.Runs()
    known = len(background.TIMINGS)
    runs.start({"failing": failing}, tmp_path)
    with pytest.raises(background.RunFailed, match="the failing run failed: ValueError: no dom0"):
        runs.wait("failing")
    assert background.TIMINGS[known:] == [("failing: step", 1.5)]
    del background.TIMINGS[known:]
    assert "about to fail" in (tmp_path / "failing" / "console.live").read_text()


def test_the_clock_guard_names_a_swapped_clock(monkeypatch):
    assert conftest.swapped_clocks() == []
    with monkeypatch.context() as m:
        m.setattr(time, "monotonic", lambda: 0.0)
        assert conftest.swapped_clocks() == ["time.monotonic"]
    assert conftest.swapped_clocks() == []


@pytest.mark.allow_subprocess(reason="a system run is a process of its own (forked)")
def test_a_run_that_skips_skips_the_tests_that_wait_for_it(tmp_path):
    def skipping(ctx: background.Context) -> None:
        pytest.skip("no qemu here")

    runs = background.Runs()
    runs.start({"skipping": skipping}, tmp_path)
    with pytest.raises(pytest.skip.Exception, match="no qemu here"):
        runs.wait("skipping")
