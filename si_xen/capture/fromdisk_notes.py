"""What another hypervisor left in a captured guest: its guest tools, and initramfs images that
hold that hypervisor's disk drivers (or whose kernel has them built in) but not Xen's: a Xen VM
of the image would not find its disk.

Found by reading files of the mounted guest (guestfs.Guest: no link leads out of it; an
initramfs read as data by initramfs.scan), never by running anything of the guest. Each note
is a line for the capture's summary, saying what was found and what to do about it.
"""

from __future__ import annotations

import re

from ..fixups.kernel import INITRDS
from ..guestfs import GuestPathError
from ..initramfs import Unreadable, scan

# (what, the package to remove, guest paths that show it installed)
TOOLS = (
    ("VMware tools", "open-vm-tools", ("usr/bin/vmtoolsd", "usr/sbin/vmtoolsd", "etc/vmware-tools",
                                       "usr/lib/vmware-tools", "var/lib/dpkg/info/open-vm-tools.list")),
    ("Hyper-V daemons", "hyperv-daemons", ("usr/sbin/hv_kvp_daemon", "usr/sbin/hypervkvpd", "usr/sbin/hv_vss_daemon",
                                           "usr/libexec/hypervkvpd", "var/lib/dpkg/info/hyperv-daemons.list")),
    ("VirtualBox guest additions", "virtualbox-guest-utils", ("usr/sbin/VBoxService", "usr/bin/VBoxService",
                                                              "var/lib/dpkg/info/virtualbox-guest-utils.list")),
    ("the QEMU guest agent", "qemu-guest-agent", ("usr/sbin/qemu-ga", "usr/bin/qemu-ga")),
)
# Another hypervisor's disk drivers, by module name (as initramfs.scan's names give them, - for _).
FOREIGN_DRIVERS = {"virtio-blk": "KVM", "virtio-scsi": "KVM", "vmw-pvscsi": "VMware", "mptspi": "VMware",
                   "hv-storvsc": "Hyper-V"}
# the same, built into the kernel: its config option
BUILTIN = {"virtio-blk": "CONFIG_VIRTIO_BLK", "virtio-scsi": "CONFIG_SCSI_VIRTIO", "vmw-pvscsi": "CONFIG_VMWARE_PVSCSI",
           "hv-storvsc": "CONFIG_HYPERV_STORAGE"}


def _safe(query, gpath: str):
    """A Guest query; None for a path that loops (a planted link: nothing there to note)."""
    try:
        return query(gpath)
    except GuestPathError:
        return None


def _tools(g) -> list[str]:
    out = []
    for what, package, paths in TOOLS:
        found = [p for p in paths if _safe(g.exists, p)]
        if found:
            out.append(f"{what} installed (/{found[0]}): of no use under Xen; remove {package} from the image")
    return out


def _initrds(g) -> list[str]:
    out = []
    for kernel in _safe(lambda d: g.glob(d, "vmlinu[xz]-*"), "/boot") or []:
        ver = kernel.split("-", 1)[1]
        config = _safe(g.read_text, f"boot/config-{ver}") or ""
        if re.search(r"(?m)^CONFIG_XEN_BLKDEV_FRONTEND=y", config):
            continue  # built in: no initramfs needed for the disk
        initrd = next((p.format(v=ver) for p in INITRDS if _safe(g.isfile, p.format(v=ver))), None)
        if initrd is None:
            continue
        try:
            have = scan(g.path(initrd)).modules
        except Unreadable as e:
            out.append(f"/{initrd} {e}: check it can boot under Xen (it needs xen-blkfront)")
            continue
        except OSError as e:
            out.append(f"/{initrd} cannot be read ({e.strerror}): check it holds xen-blkfront")
            continue
            # the kernel's own (built in), and the initramfs's modules
        builtin = {m for m, opt in BUILTIN.items() if re.search(rf"(?m)^{opt}=y", config)}
        foreign = sorted(f"{m} ({FOREIGN_DRIVERS[m]})" for m in (have | builtin) & FOREIGN_DRIVERS.keys())
        if foreign and "xen-blkfront" not in have:
            out.append(f"/{initrd} has {', '.join(foreign)} but not xen-blkfront: a Xen VM cannot find its "
                       "root disk with it; rebuild it in the image with xen-blkfront (si_mkxenvm's kernel fixup "
                       "adds it to the initramfs configuration)")
    return out


def notes(g) -> list[str]:
    """The notes for the guest mounted at ``g`` (a guestfs.Guest)."""
    return _tools(g) + _initrds(g)
