"""The Xen run: one dom0 boot under Xen, alone after everything else, for every scenario that needs
a hypervisor: the si_mkxenvm scenarios (tests in test_xen_boot.py), then the Ganeti node's (tests in
test_ganeti.py). One boot instead of two saves a dom0 boot, si-xen's install, the calibration and
the power-off (1.5-3 min under TCG); the Ganeti scenarios come last because the node set-up renames
dom0 and gives it a second VG.

Where si_mkxenvm can run on the host (file storage) it does, at native speed, with the same
command and real loop devices; dom0 only boots those VMs. What must run inside dom0 does: LVM and
thin pools, --start and --autostart, xen-create-image with our hooks, a deploy from an image server
(an rsync daemon on the host, reached over QEMU's user network), and Ganeti's OS scripts. One guest
at a time (two guests booting together on the two emulated CPUs each took 2-3x as long: no gain).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.lib.getimage import getimage_copy
from tests.lib.imageserver import write_rsyncd_conf
from tests.system import background, testbed
from tests.system.background import Context
from tests.system.harness import Run, make_host_vms, prerequisites, run_scenarios, scenario_script

# The test image as a site's si_getimage leaves it (getimage.exclude applied), beside it; and as
# the image store holds it (debootstrap's, not the tiers' slimmed copy): the article's 256 MB
# proofs, whose VMs boot the Xen-sized initramfs si_mkxenvm makes of the image's (issue 31).
GETIMAGE = "debian12-getimage"
STORE = "debian12-store"

# The golden image with cloud-init (issue 30), and the user-data its VM is made with: the run's own SSH
# key for the image's default user (dom0 logs in with it, payload file cloud-key), a runcmd's marker.
CLOUD = "debian12-cloud"
USER_DATA = """#cloud-config
ssh_authorized_keys:
  - {key}
runcmd:
  - [sh, -c, "echo si-xen user-data ran > /var/lib/si-xen-test-marker"]
"""

# The image the lifecycle scenario's VM is made from: a writable copy of the test image (lib.sh's LC_IMAGE).
LC_IMAGE = "debian12u"

# Made on the host: name -> si_mkxenvm arguments (besides image, hostname, sizes, --yes);
# "@IMAGE" first: made from that image instead of debian12.
HOST_VMS = {
    # Static address: the console banner shows it and dom0 reaches it over xenbr0. Made from the
    # image as si_getimage leaves it (no SSH host keys, no /etc/hostname): it must answer SSH anyway.
    "pvstatic": f"@{GETIMAGE} --ip 10.0.0.5 --netmask 255.255.255.0 --gateway 10.0.0.1 --dir /srv/xen --full-copy "
                "--boot direct --type pv --memory 256M",
    # The harness's own test: this guest is made to hang in its initramfs (break=init).
    "hung": "--dhcp --dir /srv/xen --boot direct --type pv",
    # /srv/xen is XFS: these VMs are reflink clones of the image's base disk
    "pygrub": f"@{STORE} --dhcp --dir /srv/xen --boot pygrub --type pv --memory 256M",
    "pvh": "--dhcp --dir /srv/xen --boot direct --type pvh",
    # cloud-init's NoCloud seed with --user-data (the file the run writes: {user_data})
    "pvgrub2": f"@{CLOUD} --dhcp --dir /srv/xen --boot pvgrub2 --type pv --user-data {{user_data}}",
    # Captured back into images (issue 29), each then deployed again: pygrub's VM for physical
    # machines (V2P: si-xen's changes undone, identity removed), and the VM made of that as a VMware
    # disk (V2V: si_getxenimage --from-disk of a qemu-img vmdk; not pvgrub2's, whose cloud-init
    # would run again in the VM made of it: a minute more under TCG, proving nothing more)
    "v2p": "capture pygrub",
    "captured": "@v2p --dhcp --dir /srv/xen --boot pvgrub2 --type pv",
    "v2v": "vmdk captured",
    "fromvmdk": "@v2v --dhcp --dir /srv/xen --boot pvgrub2 --type pv",
    # Rebuilt and updated in dom0 (the lifecycle scenario), from a copy of the image on the disk
    # "vms" that dom0 changes: a direct kernel, so that the update puts the image's new one in place.
    "lifecycle": f"@{LC_IMAGE} --ip 10.0.0.6 --netmask 255.255.255.0 --gateway 10.0.0.1 --dir /srv/xen "
                 "--boot direct --type pv",
}

# The image server as dom0 sees it: QEMU's user network (restrict=on: nothing else is reachable)
# forwards this address's rsync port to an rsync daemon on the host, one per connection, as
# inetd would start it.
SERVER = "10.0.2.100"

# name -> (base budget in s on a quiet machine, with margin; the dom0 call). Run in this order.
XEN_SCENARIOS = {
    "pvstatic": (170, "GRACEFUL=1 EXPECT_CONSOLE=10.0.0.5 PING=10.0.0.5 KEYSCAN=10.0.0.5 EXPECT_SLIM=1 host_vm pvstatic"),
    "hung": (45, "CMDLINE_EXTRA=break=init host_vm hung"),
    "pygrub": (240, "EXPECT_CLONE=1 EXPECT_SLIM=1 host_vm pygrub"),
    # cloud-init from si-xen's seed, reached over SSH: the user-data ran, its stages timed (CLOUD_INIT)
    "pvgrub2": (360, "CLOUD=1 host_vm pvgrub2"),
    # VMs made from images si_getxenimage captured on the host (V2P of a VM; V2V of a vmdk)
    "captured": (300, "host_vm captured"),
    "fromvmdk": (300, "host_vm fromvmdk"),
    "xentools": (420, "xentools_vm xt1"),
    # made in dom0 from the image server (pulled over the network into dom0's cache), into a thin
    # pool: the cached image's base LV and a thin snapshot of it; started with --console on a terminal
    # that is hung up once the guest is up (the VM must stay), and autostarted by si_mkxenvm
    "server": (600, f"SERVER={SERVER} EXPECT_CLONE=1 EXPECT_AUTOSTART=1 CONSOLE_HUP=1 server_vm server --dhcp --lvm vg0 "
                    "--thin-pool pool0 --boot direct --type pv --autostart"),
    # made in dom0 with --toolstack libvirt (a clone of the lifecycle image's base, before that image
    # changes): defined and started by libvirt's libxl driver; its xl conversion agrees with xl.cfg
    "libvirt": (300, "libvirt_vm libvirt 10.0.0.7"),
    # rebuilt with --restart (identity carried), then updated with --restart to the image's next
    # generation: each boot answers SSH with the same host keys at the same address
    "lifecycle": (600, "lifecycle lifecycle 10.0.0.6"),
    # QEMU's emulated SVM now and then triple-faults a PVH guest, more often on a loaded host
    # (README, "PVH"): xl restarts it (on_reboot = "restart"); faults in Xen's own state are the
    # emulator's and reported, up to two in the guest's state too; it must still log in in time.
    "pvh": (480, "TRIPLE_FAULTS_ALLOWED=3 host_vm pvh"),
}
XEN_VMS = {**{n: n for n in XEN_SCENARIOS if n != "hung"}, "xentools": "xt1"}  # scenario -> its VM

# The Ganeti node (dom0 renamed node1, a VG on a sparse 24 GiB disk, the cluster initialised, our
# OS listed), then each scenario on what the one before left: add -> reinstall + rename -> export +
# import. The node set-up is reported as a scenario of its own (VMS=: it makes no VM).
GANETI_SCENARIOS = {
    "gnt_node": (300, "VMS= ganeti_node"),
    "gnt_add": (600, "VMS=inst1.sixen.test ganeti_add inst1"),
    "gnt_reinstall_rename": (600, "VMS='inst1.sixen.test inst2.sixen.test' ganeti_reinstall_rename inst1 inst2"),
    "gnt_export_import": (900, "VMS='inst2.sixen.test inst3.sixen.test' ganeti_export_import inst2 inst3"),
}
GANETI_LOGINS = {"gnt_add": "inst1.sixen.test", "gnt_reinstall_rename": "inst2.sixen.test",
                 "gnt_export_import": "inst3.sixen.test"}


def xen_scenarios(ctx: Context) -> Run:
    """The Xen run: host-made VMs, the image server, then every scenario in one dom0 boot."""
    pre = prerequisites(ctx)
    vms, tree = ctx.work / "vms.xfs", ctx.work / GETIMAGE
    served = ctx.work / "server" / "images" / "debian12"
    served.mkdir(parents=True)
    # The server serves the very tree the other scenarios use: the test image's disk, read-only.
    subprocess.run(["mount", "-o", "ro,noload,loop", str(pre.image_disk), str(served)], check=True)
    try:
        conf = write_rsyncd_conf(str(ctx.work / "server"), {"debian12": str(served)})
        nic = f"user,restrict=on,model=virtio-net-pci,guestfwd=tcp:{SERVER}:873-cmd:rsync --daemon --config={conf}"
        getimage_copy(str(pre.image), str(tree))
        user_data = cloud_login(ctx.work, pre.payload)
        host_vms = {n: a.replace("{user_data}", str(user_data)) for n, a in HOST_VMS.items()}
        make_host_vms(pre.image_disk, "debian12", host_vms, vms, trees={GETIMAGE: tree, STORE: pre.image, CLOUD: pre.cloud},
                      copies=(LC_IMAGE,))
        script = scenario_script(["setup_dom0 || exit 1", "scratch_vg vg0 || exit 1",
                                  "thin_pool vg0 pool0 4G || exit 1", "si_mkxenvm --version"],
                                 {**XEN_SCENARIOS, **GANETI_SCENARIOS})
        disks = [testbed.Disk("image-debian12", pre.image_disk), testbed.Disk("vms", vms),
                 testbed.Disk("lvm", size="12G"), testbed.Disk("ganeti", size="24G")]
        # first call on the CPU: its guests' own timeouts (systemd's device wait) do not follow our budgets
        return run_scenarios(ctx, pre.payload, script, xen=True, disks=disks, nic=nic,
                             priority=background.XEN_PRIORITY)
    finally:
        subprocess.run(["umount", str(served)], check=False)
        vms.unlink(missing_ok=True)  # a sparse 12 GiB image with several GB in it
        shutil.rmtree(tree, ignore_errors=True)


def cloud_login(work: Path, payload: Path) -> Path:
    """The run's SSH key: its public half in the user-data file (returned), the private one in the payload."""
    key = work / "cloud-key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "si-xen-test", "-f", str(key)], check=True)
    (work / "user-data").write_text(USER_DATA.format(key=(work / "cloud-key.pub").read_text().strip()))
    shutil.copy(key, payload / "cloud-key")
    return work / "user-data"


ALONE_RUN = ("xen", xen_scenarios)  # after the host tiers and the plain-Linux run: its guests get the machine
