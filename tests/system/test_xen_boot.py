"""VMs made by si_mkxenvm boot to a login prompt under a real Xen 4.17 (nested in QEMU TCG).

The scenarios run in the Xen run's one dom0 boot (xenrun.py), each reported here as its own tests.
"""

from __future__ import annotations

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
    xl.cfg; si_rmxenvm leaves no domain defined."""
    xen_run.require_ok("libvirt")
    section = xen_run.section("libvirt")
    assert "xl.cfg and libvirt's agree on" in section and "removed with its definition" in section, section


@pytest.mark.parametrize("name", ["captured", "fromvmdk"])
def test_a_vm_of_a_captured_image_boots(xen_run, name):
    """Issue 29's proofs under Xen: an image si_getxenimage captured from a VM (for physical
    machines: si-xen's changes undone) and one captured from a VMware disk (qemu-img's vmdk of a
    VM's root disk, --from-disk) each make a VM that boots to its login prompt."""
    xen_run.require_login(name, name)
    xen_run.require_ok(name)
