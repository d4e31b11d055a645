"""VMs made by si_mkxenvm boot to a login prompt under a real Xen 4.17 (nested in QEMU TCG).

One dom0 boot runs every scenario in sequence (booting Xen costs more than a scenario);
each scenario is then reported as its own test.
"""

from __future__ import annotations

import pytest

from tests.system.harness import run_scenarios

pytestmark = pytest.mark.system

# name -> si_mkxenvm arguments (besides image, hostname, sizes, --yes --start).
SCENARIOS = {
    # Static address: the console banner shows it and dom0 reaches it over xenbr0.
    "pvstatic": "--ip 10.0.0.5 --netmask 255.255.255.0 --gateway 10.0.0.1 --dir /srv/xen --full-copy "
                "--boot direct --type pv",
    "pvgrub2": "--dhcp --lvm vg0 --boot pvgrub2 --type pv",
    # /srv/xen is XFS: this VM is a reflink clone of the image's base disk
    "pygrub": "--dhcp --dir /srv/xen --boot pygrub --type pv",
    "pvh": "--dhcp --lvm vg0 --boot direct --type pvh",
    # a thin snapshot of the image's base LV
    "thin": "--dhcp --lvm vg0 --thin-pool pool0 --boot direct --type pv",
}
EXTRA_ENV = {"pvstatic": "EXPECT_CONSOLE=10.0.0.5 PING=10.0.0.5 ", "pygrub": "EXPECT_CLONE=1 ",
             "thin": "EXPECT_CLONE=1 "}
LAG = 2


@pytest.fixture(scope="module")
def xen_run(payload, image_disk, tmp_path_factory):
    body = ["setup_dom0 || exit 1", "scratch_fs /srv/xen xfs || exit 1", "scratch_vg vg0 || exit 1",
            "thin_pool vg0 pool0 4G || exit 1", "si_mkxenvm --version"]
    # Each VM boots while dom0 makes the next ones; at most LAG + 1 domUs run at once (memory).
    starts = [f"begin {n} vm_started {n} {a}" for n, a in SCENARIOS.items()] + ["begin xentools xentools_started xt1"]
    checks = [f"{EXTRA_ENV.get(n, '')}finish {n} vm_checked {n}" for n in SCENARIOS] + [
        "finish xentools xentools_checked xt1"]
    for i, start in enumerate(starts):
        body.append(start)
        if i >= LAG:
            body.append(checks[i - LAG])
    body += checks[len(starts) - LAG:]
    return run_scenarios(payload, image_disk, "\n".join(body), tmp_path_factory.mktemp("xen"), xen=True,
                         timeout=1800)


VMS = {**{n: n for n in SCENARIOS}, "xentools": "xt1"}  # scenario -> its VM's name


@pytest.mark.parametrize("name", VMS)
def test_boots_to_login(xen_run, name):
    """The VM's console shows `NAME login:` under Xen."""
    if VMS[name] not in xen_run.reached:
        pytest.fail(f"{VMS[name]} never showed its login prompt:\n{xen_run.section(name)}")


@pytest.mark.parametrize("name", VMS)
def test_checked_and_removed(xen_run, name):
    """Everything else the scenario checks: xl list, console address, ping, and the removal."""
    if not xen_run.ok.get(name):
        pytest.fail(f"scenario {name} failed:\n{xen_run.section(name)}")
