"""System tier plumbing: the QEMU runs start in the background with the session (background.py),
system tests run last and wait for them; the tier's timings close the report."""

from __future__ import annotations

import pytest

from tests.system.background import RUNS
from tests.system.harness import TIMINGS


def pytest_collection_modifyitems(items):
    # This hook sees every item of the session: the system tests go last (stable sort), so the
    # host tiers run while the QEMU runs they wait for are under way.
    items.sort(key=lambda item: item.get_closest_marker("system") is not None)


def pytest_collection_finish(session):
    if session.config.option.collectonly:
        return
    specs = {}
    for item in session.items:
        run = getattr(getattr(item, "module", None), "BACKGROUND_RUN", None)
        if run:
            specs.setdefault(*run)
    if not specs:
        return
    base = session.config._tmp_path_factory.mktemp("system")
    tr = session.config.pluginmanager.get_plugin("terminalreporter")
    for job in RUNS.start(specs, base):
        if tr:
            tr.write_line(f"system tier: the {job.name} run started in the background (its console: "
                          f"{job.console_path})")


def pytest_sessionfinish(session):
    RUNS.stop()  # an interrupted or -x session: QEMU killed by pid, mounts undone


def pytest_terminal_summary(terminalreporter):
    for job in RUNS.jobs.values():
        if job.seconds:
            TIMINGS.append((f"{job.name}: background run (prerequisites included)", job.seconds))
    if TIMINGS:
        terminalreporter.section("system tier timings (s)")
        for what, s in TIMINGS:
            terminalreporter.write_line(f"{what:48s} {s:7.1f}")


@pytest.fixture(scope="module")
def system_run(request):
    """The result of the test module's BACKGROUND_RUN (waits for it; its error raised here)."""
    return RUNS.wait(request.module.BACKGROUND_RUN[0])
