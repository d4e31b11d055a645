"""si-xen-ganeti(7): the Ganeti OS, its parameters from params.PARAMS (as parameters.list and
``verify`` read them)."""

from __future__ import annotations

from .. import PROJECT, __version__
from ..roff import esc
from . import osdef, params

DESCRIPTION = f"""\
si-xen installs Ganeti instances from SystemImager images: the OS definition \
{osdef.OS_DIR} (Ganeti OS API {osdef.API_VERSION}) runs si-xen's own pipeline on the disks \
Ganeti hands over. Its variants are the images (systemimager+IMAGE), listed in \
{osdef.VARIANTS} by si_xenhooks ganeti-variants (the Debian package writes it once; run it \
again after si_getimage adds an image, with --server HOST for an image server's images).

create copies the image onto disk 0 as one filesystem covering the whole disk (the guest's \
/dev/xvda; Ganeti's sda), makes the last of two or more disks the swap (swap=yes), and applies \
the guest fixups with Ganeti's facts: the instance name as hostname, NIC 0's MAC, its IP with \
the netmask and gateway of its Ganeti network (DHCP when it has no IP), fstab for these disks, \
a fresh identity. The guest boots as the cluster's xen-pvm parameters say: with \
kernel_path={'/usr/lib/grub-xen/grub-x86_64-xen.bin'} (pvgrub2) or use_bootloader=True with \
pygrub, si-xen writes a grub.cfg for the guest's own kernel; with a dom0 kernel as kernel_path \
(and root_path=/dev/xvda), that kernel's modules are copied in. A reinstall \
(gnt-instance reinstall) does the same again. rename runs the hostname fixup for the new \
name. export writes one disk per call to stdout: a filesystem as a tar of its tree (any \
filesystem type), the swap as nothing, another disk raw; import reads it back, and disk 0 \
is installed like an image, with the fixups for the importing instance (its name, NICs, \
disks) but its own identity (host keys) kept. verify parameters checks every OS parameter \
and that the image exists on this node. A failure ends with one FATAL line, the last line \
of Ganeti's OS log (/var/log/ganeti/os/), which Ganeti shows; si-xen's own log of the \
commands is /var/log/si-xen/ganeti-INSTANCE.log."""

SETUP = """\
gnt-cluster init --enabled-hypervisors=xen-pvm --enabled-disk-templates=plain \\
  --vg-name=xenvg --master-netdev=xenbr0 -N mode=bridged,link=xenbr0 \\
  -H xen-pvm:xen_cmd=xl,kernel_path=/usr/lib/grub-xen/grub-x86_64-xen.bin,root_path=,kernel_args= \\
  cluster.example.org
si_xenhooks ganeti-variants
gnt-os list
gnt-instance add -o systemimager+debian12 -t plain --disk 0:size=4G --disk 1:size=512M \\
  -B maxmem=512M,minmem=512M -O filesystem=ext4 -n node1 inst1.example.org
gnt-instance reinstall -O overrides=site inst1.example.org
gnt-backup export -n node1 inst1.example.org"""


def render() -> str:
    lines = [
        f'.TH SI\\-XEN\\-GANETI 7 "" "{PROJECT} {__version__}" "{PROJECT}"',
        ".SH NAME", "si-xen-ganeti \\- the systemimager OS for Ganeti: instances from SystemImager images",
        ".SH DESCRIPTION", esc(DESCRIPTION),
        ".SH OS PARAMETERS", esc("Given with -O name=value to gnt-instance add/reinstall or gnt-os modify."),
    ]
    for p in params.PARAMS:
        lines += [".TP", f"\\fB{esc(p.name)}\\fR" + (f" (default {esc(p.default)})" if p.default else ""), esc(p.summary)]
    lines += [".SH EXAMPLES", ".nf", esc(SETUP), ".fi", ".SH FILES",
              esc(f"{osdef.OS_DIR}/ (create import export rename verify, parameters.list, variants.list)\n"
                  f"{osdef.VARIANTS}"),
              ".SH SEE ALSO", "si_mkxenvm(8), si_xenhooks(8), gnt\\-instance(8), ganeti\\-os\\-interface(7)"]
    return "\n".join(lines) + "\n"
