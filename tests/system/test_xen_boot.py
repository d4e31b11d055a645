"""VMs made by si_mkxenvm boot to a login prompt under a real Xen 4.17 (nested in QEMU TCG).

The scenarios run in the Xen run's one dom0 boot (xenrun.py), each reported here as its own tests.
"""

from __future__ import annotations

import re

import pytest

from tests.system.xenrun import ALONE_RUN, XEN_SCENARIOS, XEN_VMS

pytestmark = pytest.mark.system
__all__ = ["ALONE_RUN"]  # the run this module's tests wait for (conftest's system_run)
SCENARIOS, VMS = XEN_SCENARIOS, XEN_VMS


@pytest.fixture(scope="module")
def xen_run(system_run):
    return system_run


@pytest.mark.parametrize("name", VMS)
def test_boots_to_login(xen_run, name):
    """The VM's console shows `NAME login:` under Xen."""
    xen_run.require_login(name, VMS[name])


@pytest.mark.parametrize("name", VMS)
def test_checked_and_removed(xen_run, name):
    """Everything else the scenario checks: xl list, console address, ping, and the removal."""
    xen_run.require_ok(name)


def test_hung_guest_fails_alone(xen_run):
    """The harness itself: a guest that never logs in fails its own scenario within its limit,
    with its console tail and Xen's view in the report, is taken away, and the next scenario runs."""
    assert "hung" in xen_run.ok, f"the hung scenario never reported:\n{xen_run.section('hung')}"
    section = xen_run.section("hung")
    assert not xen_run.ok["hung"], f"a guest stopped in its initramfs passed:\n{section}"
    assert "hung" not in xen_run.reached
    for expected in ("--- diagnosis of hung", "console tail", "xl list:", "xl dmesg tail:", "dom0 load:"):
        assert expected in section, f"diagnosis lacks {expected!r}:\n{section}"
    console = section[section.index("console tail"):section.index("xl list:")]
    assert "(initramfs)" in console, f"the console tail does not show the guest's shell prompt:\n{section}"
    # the guest's own journal, read from its disk, tells where it stopped: before its root's systemd
    assert "GUEST_JOURNAL hung: nothing of this boot in its journal" in section, section
    after = list(SCENARIOS)[list(SCENARIOS).index("hung") + 1]
    assert after in xen_run.ok, f"the scenario after the hung one ({after}) never ran"


@pytest.mark.parametrize("name", ["pvstatic", "pygrub"])
def test_the_articles_256m(xen_run, name):
    """Issue 31: the test image as the store holds it (Debian's MODULES=most initramfs, which needs
    384 MiB), made with --memory 256M, boots to its login prompt with the Xen-sized initramfs
    si_mkxenvm made of the image's: direct (Xen loads it) and pygrub (grub.cfg's first entry)."""
    xen_run.require_login(name, name)
    xen_run.require_ok(name)
    section = xen_run.section(name)
    assert f"{name}: 256 MiB, a Xen-sized initramfs (Xen-sized, " in section, section


def test_lifecycle_keeps_identity(xen_run):
    """A running VM rebuilt and then updated to its image's next generation, each with --restart:
    after each, the SSH host keys, MAC and address it was made with; after the update, the image's
    changes (a changed file, an added one, an override, the banner fixed up again, a removed file
    gone) and the image's new initramfs booted."""
    xen_run.require_ok("lifecycle")
    section = xen_run.section("lifecycle")
    for proof in ("lifecycle rebuilt: the same SSH host keys, MAC and address",
                  "lifecycle updated: the same SSH host keys, MAC and address",
                  "banner shows the changed /etc/issue", "boots the image's new initramfs",
                  "/etc/issue.net, removed from the image, is gone"):
        assert proof in section, f"the lifecycle scenario did not show {proof!r}:\n{section}"


def test_a_vm_defined_through_libvirt_boots_and_is_undefined(xen_run):
    """Issue 30 under Xen: si_mkxenvm --toolstack libvirt defines and starts the VM through libvirtd's
    libxl driver; it logs in; `virsh domxml-to-native xen-xl` of its domain agrees with si-xen's
    xl.cfg; stopped, `si_mkxenvm --rebuild` redefines the same domain (its uuid, the new memory);
    si_rmxenvm leaves no domain defined."""
    xen_run.require_ok("libvirt")
    section = xen_run.section("libvirt")
    for proof in ("xl.cfg and libvirt's agree on", "rebuilt as the same libvirt domain", "removed with its definition"):
        assert proof in section, section


def test_cloud_init_runs_from_si_xens_seed_without_a_datasource_wait(xen_run):
    """Issue 30 under Xen: a golden image with Debian's cloud-init, made with --user-data: cloud-init
    is done without errors or warnings from the NoCloud seed (no network datasource probed), the
    user-data ran, the hostname and SSH host keys are si_mkxenvm's; and its boot is slower than a
    guest's without cloud-init (captured: pvgrub2 too, of the same store image) by no more than
    cloud-init's own stages before the login prompt, give or take half that guest's boot."""
    xen_run.require_ok("pvgrub2")
    section = xen_run.section("pvgrub2")
    assert "answers SSH with the 3 host keys si_mkxenvm printed" in section, section
    stages = re.search(r"^CLOUD_INIT pvgrub2 before_login=([\d.]+) .* search=([\d.]+)$", section, re.M)
    assert stages and float(stages[1]) > 0, f"cloud-init's stages were not timed:\n{section}"
    # a network datasource's wait is inside those stages: cloud-init's own time for its search is
    # the proof (NoCloud's seed read from the disk: about a second under TCG; a probe waits 10 s+)
    assert float(stages[2]) < 10, f"cloud-init searched its datasource for {stages[2]} s:\n{section}"
    xen_run.require_ok("captured")
    cloud, plain = (_timing(xen_run, f"login_{n}") for n in ("pvgrub2", "captured"))
    assert cloud - plain <= float(stages[1]) + plain / 2, (
        f"login {cloud} s with cloud-init, {plain} s without; cloud-init's stages before it {stages[1]} s:\n{section}")


def _timing(run, name: str) -> float:
    m = re.search(rf"^TIMING {name} ([\d.]+)$", run.log, re.M)
    assert m, f"no TIMING {name} in the run's output"
    return float(m[1])


@pytest.mark.parametrize("name", ["captured", "fromvmdk"])
def test_a_vm_of_a_captured_image_boots(xen_run, name):
    """Issue 29's proofs under Xen: an image si_getxenimage captured from a VM (for physical
    machines: si-xen's changes undone) and one captured from a VMware disk (qemu-img's vmdk of a
    VM's root disk, --from-disk) each make a VM that boots to its login prompt."""
    xen_run.require_login(name, name)
    xen_run.require_ok(name)
