"""si_mkxenvm --lvm for real: LVM needs device-mapper, which only the testbed's kernel has.

The dom0 kernel boots without Xen here (nothing is started, so no hypervisor is needed).
"""

from __future__ import annotations

import pytest

from tests.system.harness import run_scenarios

pytestmark = pytest.mark.system


def test_lvm_storage_made_and_removed(payload, image_disk, tmp_path):
    body = "install_sixen || exit 1\nmount_images\nscratch_vg vg0 || exit 1\nscenario lvm lvm_made lvm1"
    run = run_scenarios(payload, image_disk, body, tmp_path, xen=False, timeout=900)
    assert run.ok.get("lvm"), f"LVM scenario failed:\n{run.section('lvm')}"
