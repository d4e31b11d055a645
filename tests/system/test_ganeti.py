"""The systemimager OS under a real one-node Ganeti 3.0 cluster, in the Xen testbed's dom0.

dom0 is the node: Debian's ganeti package (in the dom0 build), xen-pvm with xen_cmd=xl, plain
LVM disks on a sparse 24 GiB disk, pvgrub2 as the cluster's kernel_path, si-xen installed from
its Debian package (which puts the OS definition on Ganeti's search path). One dom0 boot runs
the scenarios in order, each on what the one before left: gnt-instance add (our create script)
and the instance's login prompt; reinstall as XFS, then rename, and one boot showing both;
gnt-backup export (our export script), the instance removed, gnt-backup import (our import
script) as a new instance, and its login prompt.
"""

from __future__ import annotations

import pytest

from tests.system import testbed
from tests.system.background import Context
from tests.system.harness import Run, prerequisites, run_scenarios, scenario_script

pytestmark = pytest.mark.system

# name -> (base budget in s on a quiet machine, with margin; the dom0 call). Run in this order.
SCENARIOS = {
    "gnt_add": (600, "VMS=inst1.sixen.test ganeti_add inst1"),
    "gnt_reinstall_rename": (600, "VMS='inst1.sixen.test inst2.sixen.test' ganeti_reinstall_rename inst1 inst2"),
    "gnt_export_import": (900, "VMS='inst2.sixen.test inst3.sixen.test' ganeti_export_import inst2 inst3"),
}
LOGINS = {"gnt_add": "inst1.sixen.test", "gnt_reinstall_rename": "inst2.sixen.test",
          "gnt_export_import": "inst3.sixen.test"}


def ganeti_scenarios(ctx: Context) -> Run:
    """The Ganeti run (alone, after the Xen run): the node set up, then every scenario."""
    pre = prerequisites(ctx)
    script = scenario_script(["setup_dom0 || exit 1", "ganeti_node || exit 1"], SCENARIOS)
    disks = [testbed.Disk("image-debian12", pre.image_disk), testbed.Disk("ganeti", size="24G")]
    return run_scenarios(ctx, pre.payload, script, xen=True, disks=disks)


ALONE_RUN = ("ganeti", ganeti_scenarios)


@pytest.fixture(scope="module")
def ganeti_run(system_run):
    return system_run


@pytest.mark.parametrize("name", SCENARIOS)
def test_instance_boots_to_login(ganeti_run, name):
    """After each step the instance (Ganeti's domain, named by its FQDN) shows its login prompt."""
    ganeti_run.require_login(name, LOGINS[name])


@pytest.mark.parametrize("name", SCENARIOS)
def test_ganeti_scenario_passes(ganeti_run, name):
    """Everything else the scenario checks: the gnt-* commands, the console, the shutdown."""
    ganeti_run.require_ok(name)
