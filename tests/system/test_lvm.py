"""si_mkxenvm --lvm for real: LVM needs device-mapper, which only the testbed's kernel has.

The dom0 kernel boots without Xen here (nothing is started, so no hypervisor is needed).
"""

from __future__ import annotations

import pytest

from tests.system.harness import run_scenarios

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def lvm_run(payload, image_disk, tmp_path_factory):
    body = ("install_sixen || exit 1\nmount_images\nscratch_vg vg0 || exit 1\nthin_pool vg0 pool0 6G || exit 1\n"
            "scenario lvm lvm_made lvm1\nscenario thin thin_made thin1 thin2")
    return run_scenarios(payload, image_disk, body, tmp_path_factory.mktemp("lvm"), xen=False, timeout=1200)


def test_lvm_storage_made_and_removed(lvm_run):
    assert lvm_run.ok.get("lvm"), f"LVM scenario failed:\n{lvm_run.section('lvm')}"


def test_thin_snapshot_clones_made_and_removed(lvm_run):
    assert lvm_run.ok.get("thin"), f"thin-pool scenario failed:\n{lvm_run.section('thin')}"
