"""The system tier's harness without QEMU: deadlines the script sets, and runs cut short."""

from __future__ import annotations

import time
from pathlib import Path

from tests.system import harness, testbed


class FakeQemu:
    """Stands for QEMU's Popen: running until told otherwise."""

    def __init__(self):
        self.rc = None

    def poll(self):
        return self.rc


def watch(tmp_path: Path, lines: list[str], timeout: float) -> testbed._Watch:
    serial = tmp_path / "serial.log"
    serial.write_text("".join(f"[ 1.0] noise @@ {line}\n" for line in lines) + "unmarked boot line\n")
    return testbed._Watch(FakeQemu(), serial, time.monotonic(), timeout, None, {})


def test_the_scripts_calibrated_deadline_replaces_the_boot_bound(tmp_path):
    w = watch(tmp_path, ["si-testbed: dom0 up after 20 s (xen=1)", "si-testbed: deadline 0.5 s (calibrated)",
                         "SCENARIO a ok 3"], timeout=3600)
    t = time.monotonic()
    assert w.run() is None  # QEMU never exits: stopped at the deadline the script named
    assert 0.4 < time.monotonic() - t < 5
    assert "dom0_up" in w.timings
    assert w.lines == ["si-testbed: dom0 up after 20 s (xen=1)", "SCENARIO a ok 3"]


def test_a_run_cut_short_reports_what_finished_and_why_the_rest_did_not(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "TIMINGS", [])  # not the system tier's own timings table
    lines = ["CALIBRATION dom0_up=60s (quiet 30s) cpu_probe=1600ms (quiet 800ms) factor=2.0",
             "=== scenario a (limit 300 s)", "REACHED a login", "SCENARIO a ok 80",
             "=== scenario b (limit 300 s)", "(b: still booting)"]
    res = testbed.Result(None, None, tmp_path / "results", tmp_path / "serial.log", {"qemu": 999.0}, lines, 900.0)
    (tmp_path / "serial.log").write_text("")
    run = harness.Run(res, res.log())
    harness.parse(run, "xen")
    assert run.ok == {"a": True} and run.reached == {"a"}
    assert run.calibration.endswith("factor=2.0")
    b = run.section("b")
    assert "(b: still booting)" in b and "stopped at its deadline (900 s)" in b and "factor=2.0" in b
    assert b.count("(b: still booting)") == 1 and "last lines" not in b
    assert "did not finish" in run.section("c")
    assert "SCENARIO a ok" in run.section("a") and "scenario b" not in run.section("a")
    assert ("xen: scenario a (ok)", 80.0) in harness.TIMINGS


def test_scenario_budgets_sum_for_the_deadline():
    lines, total = harness.scenario_lines({"x": (100, "host_vm x"), "y": (250, "A=1 host_vm y")})
    assert lines == ["scenario x 100 host_vm x", "scenario y 250 A=1 host_vm y"] and total == 350



def test_a_dom0_that_never_comes_up_is_stalled_not_waited_out(tmp_path):
    serial = tmp_path / "serial.log"
    serial.write_text("[ 5.69] sched_clock: Marking stable\n")  # the kernel went silent here
    w = testbed._Watch(FakeQemu(), serial, time.monotonic(), 3600, None, {}, up_bound=0.5)
    t = time.monotonic()
    assert w.run() is None and w.stalled, "given up at the boot bound, so the caller can boot again"
    assert time.monotonic() - t < 5


def test_a_dom0_that_came_up_is_never_stalled(tmp_path):
    w = watch(tmp_path, ["si-testbed: dom0 up after 20 s (xen=1)", "si-testbed: deadline 1 s (calibrated)"],
              timeout=3600)
    w.up_bound = 0.2
    assert w.run() is None and not w.stalled, "a slow scenario is held to the script's deadline, not the boot bound"
