"""System tier plumbing: the plain-Linux run starts in the background with the session, the Xen run
alone after the rest (background.py); system tests run last; the tier's timings close the report."""

from __future__ import annotations

import pytest

from tests.system.background import RUNS, TIMINGS


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
def system_run(request, tmp_path_factory):
    """The result of the test module's BACKGROUND_RUN (waited for), or of its ALONE_RUN (run now,
    once the background runs are done); the run's error is raised here."""
    if hasattr(request.module, "BACKGROUND_RUN"):
        return RUNS.wait(request.module.BACKGROUND_RUN[0])
    name, fn = request.module.ALONE_RUN
    return RUNS.run_alone(name, fn, tmp_path_factory.mktemp("system-alone"))
