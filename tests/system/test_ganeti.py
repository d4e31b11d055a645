"""The systemimager OS under a real one-node Ganeti 3.0 cluster, in the Xen run's dom0 (xenrun.py).

dom0 is the node: Debian's ganeti package (in the dom0 build), xen-pvm with xen_cmd=xl, plain
LVM disks on a sparse 24 GiB disk, pvgrub2 as the cluster's kernel_path, si-xen installed from
its Debian package (which puts the OS definition on Ganeti's search path). After the si_mkxenvm
scenarios, the same boot runs these in order, each on what the one before left: the node set up;
gnt-instance add (our create script) and the instance's login prompt; reinstall as XFS, then
rename, and one boot showing both; gnt-backup export (our export script), the instance removed,
gnt-backup import (our import script) as a new instance, and its login prompt.
"""

from __future__ import annotations

import pytest

from tests.system.xenrun import ALONE_RUN, GANETI_LOGINS

pytestmark = pytest.mark.system
__all__ = ["ALONE_RUN"]  # the run this module's tests wait for (conftest's system_run)
LOGINS = GANETI_LOGINS


@pytest.fixture(scope="module")
def ganeti_run(system_run):
    return system_run


def test_node_set_up(ganeti_run):
    """gnt-cluster init on dom0 (xen-pvm with xl, plain LVM) and `gnt-os list` shows systemimager+debian12."""
    ganeti_run.require_ok("gnt_node")


@pytest.mark.parametrize("name", LOGINS)
def test_instance_boots_to_login(ganeti_run, name):
    """After each step the instance (Ganeti's domain, named by its FQDN) shows its login prompt."""
    ganeti_run.require_login(name, LOGINS[name])


@pytest.mark.parametrize("name", LOGINS)
def test_ganeti_scenario_passes(ganeti_run, name):
    """Everything else the scenario checks: the gnt-* commands, the console, the shutdown."""
    ganeti_run.require_ok(name)
