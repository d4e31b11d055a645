"""si_mkxenvm --lvm for real: LVM needs device-mapper, which only the testbed's kernel has.

The dom0 kernel boots without Xen here (nothing is started, so no hypervisor is needed).
"""

from __future__ import annotations

import pytest

from tests.system import testbed
from tests.system.background import Context
from tests.system.harness import Run, prerequisites, run_scenarios, scenario_script

pytestmark = pytest.mark.system

SCENARIOS = {
    "lvm": (180, "lvm_made lvm1"), "thin": (300, "VMS='thin1 thin2' thin_made thin1 thin2"),
    # SIGKILL where LVM changes what is left behind: LVs made but empty, filled, mounted, and all
    # made but unrecorded (the integration tier kills at every step boundary, on file storage);
    # and each step of a thin pool's base build and of the clone after it
    "crash": (480, "crash_recovered crash1 'disks filesystems mount unmount record'"),
    "crash_thin": (600, "crash_recovered crash2 'base-disks base-filesystems base-publish disks mount' "
                        "--thin-pool pool0"),
    # si_updatexenvm: a thin VM on a thin snapshot swapped in by lvrename, a thick one in place;
    # SIGKILL at snapshot, swap, record (thin) and transfer (thick), each finished by the next run;
    # then si_mkxenvm --rebuild of both: the thin one killed with its old LV aside, the thick --keep-old
    # and si_getxenimage of the thin VM: V2P when stopped, then from a thin snapshot after a crash
    "update_lvm": (540, "VMS='upd1 upd2' update_lvm upd1 upd2"),
    # si_getxenimage --from-disk of a raw disk with LVM inside, its VG named as the run's own
    "fromdisk_lvm": (120, "fromdisk_lvm"),
}


def lvm_scenarios(ctx: Context) -> Run:
    """The plain-Linux run, in the background beside the host tiers, from the session's start."""
    pre = prerequisites(ctx)
    # Beside the host tiers it gets what they leave, which varies as they go: its budgets get a
    # floor of 2x (a hang is still caught, later).
    script = scenario_script(["install_sixen || exit 1", "mount_images", "scratch_vg vg0 || exit 1",
                              "thin_pool vg0 pool0 6G || exit 1"], SCENARIOS, "FACTOR10_FLOOR=20 calibrate")
    disks = [testbed.Disk("image-debian12", pre.image_disk), testbed.Disk("lvm", size="12G")]
    return run_scenarios(ctx, pre.payload, script, xen=False, disks=disks)


BACKGROUND_RUN = ("lvm", lvm_scenarios)


@pytest.fixture(scope="module")
def lvm_run(system_run):
    return system_run


def test_lvm_storage_made_and_removed(lvm_run):
    lvm_run.require_ok("lvm")


def test_thin_snapshot_clones_made_and_removed(lvm_run):
    lvm_run.require_ok("thin")


@pytest.mark.parametrize("name", ["crash", "crash_thin"])
def test_sigkill_mid_deploy_then_si_rmxenvm_recovers(lvm_run, name):
    """Killed at a step boundary: si_rmxenvm removes every LV, mount and lock; a re-run works."""
    lvm_run.require_ok(name)


def test_update_on_lvm_thin_copy_on_write_thick_in_place(lvm_run):
    """The image's changes in both VMs, their SSH host keys and machine-id byte-equal, the thin one
    updated on a snapshot (no .upd or .si-old LV left), killed runs finished; then both rebuilt keeping
    their identity (LVs set aside by lvrename and put back, --keep-old's kept); the thin one captured
    (V2P when stopped; after a crash, from a thin snapshot with its journal replayed, the VM's LV
    untouched); si_rmxenvm leaves nothing."""
    lvm_run.require_ok("update_lvm")


def test_from_disk_reads_lvm_inside_without_activating_it(lvm_run):
    """A foreign raw disk whose / and /var are LVs of a VG named as the host's own: captured through
    read-only device-mapper maps of si-xen's names, both filesystems in the image and its layout,
    no map, loop device or mount left, the host's VG untouched."""
    lvm_run.require_ok("fromdisk_lvm")


def test_the_cache_builds_left_no_scratch(lvm_run):
    """The builds this run needed (dom0, test image, its disk; on a cold run, built in it) exited 0,
    or the run would have failed, and left nothing but their artefacts in the cache."""
    cache = testbed.CACHE
    left = [str(p) for pattern in ("dom0/tmp.*", "images/*.tmp.*", "disks/*.tmp*", "disks/*.tree*", "chroots/*")
            for p in cache.glob(pattern) if pattern != "chroots/*" or p.is_dir()]
    assert left == [], f"scratch left in {cache}: {left}"
    assert len(list(cache.glob("dom0/*/.complete"))) == 1, "one complete dom0 build, older ones removed"
