"""si_getxenimage: si_getimage for a si-xen VM — the VM captured back into a SystemImager image."""

from __future__ import annotations

import sys

from .. import config
from ..capture.reverse import REVERSAL
from ..errors import Fatal
from ..report import Reporter
from .common import need_root, parser, run_main

PROG = "si_getxenimage"
MAN = {
    "summary": "capture a Xen VM made by si_mkxenvm (or another hypervisor's disk) into a SystemImager image",
    "synopsis": "[--keep-xen] [--snapshot] [--force | --update] NAME IMAGE\n"
                "[options] --from-disk FILE IMAGE",
    "description": (
        "si_getxenimage does for a VM what si_getimage(8) does for a golden client, from the Xen host and\n"
        "with the VM stopped: the VM's filesystems are mounted read-only as one tree (its own fstab) in a\n"
        "private mount namespace, and copied with rsync -aHAXS --numeric-ids --delete into the image\n"
        "directory SystemImager's configuration names (DEFAULT_IMAGE_DIR/IMAGE, or the path of the image's\n"
        "rsync stub). SystemImager's getimage.exclude (the server's /etc/systemimager/getimage.exclude, else\n"
        "its shipped list), what si_mkxenvm never copies (/proc, /sys, /run, /tmp, lost+found) and the VM's\n"
        "network mounts are left out. The image gets what si_getimage and si_prepareclient write:\n"
        "etc/systemimager/disks-layout.xml and/or autoinstallscript.conf (the formats the VM's tree has, else\n"
        "both) made from the VM's disks and /etc/fstab, IMAGE_RETRIEVAL_TIME, IMAGE_RETRIEVED_FROM (the VM's\n"
        "name), the server's copy scripts/disks-layouts/IMAGE.xml where SystemImager's scripts directory\n"
        "exists, and the rsync stub RSYNC_STUB_DIR/40IMAGE so the site's rsync daemon serves it; then, as\n"
        "si_getimage does, si_mkrsyncd_conf where SystemImager's server has it (else the summary says to run it).\n\n"
        "The image is built beside its place (IMAGE_DIR/.IMAGE.si-xen-new-PID) and renamed into place whole:\n"
        "it is never half-written. An existing image is refused unless --force (the new one replaces it in\n"
        "one rename) or --update (refreshed: unchanged files are hard links to the old image, so only what\n"
        "changed is copied). A capture that was killed leaves a staging directory that the next one removes.\n\n"
        "The VM's identity is removed (SSH host keys, machine-id emptied as systemd expects). Without\n"
        "--keep-xen, the Xen fixups si_mkxenvm made are undone as well (V2P: gettys, hwclock, fstab device\n"
        "names, network configuration), and what could not be undone is listed. With --keep-xen the image\n"
        "stays Xen-ready: si_mkxenvm makes VMs of it as of any image.\n\n"
        "A running VM is refused unless --snapshot: its disks are then read from a copy-on-write copy\n"
        "(--dir on XFS or btrfs: reflinks; LVM thin pools: a thin snapshot), what a crash would leave; the\n"
        "copy's journals are replayed into it, so the image is what the guest would see after a reboot.\n"
        "A stopped VM that was destroyed rather than shut down (its journals hold changes) is read the same\n"
        "way, or, on storage that cannot copy, refused: start it and shut it down cleanly first. A foreign\n"
        "disk in that state (--from-disk of a raw file) is read from a private raw copy. LVM inside a foreign\n"
        "disk is read where the host has device-mapper: its linear and striped LVs mapped read-only under\n"
        "si-xen's own names (si-xen-ro-PID-N), never activated, so a host VG of the same name is no clash.\n"
        "The VM is only read: its lock is held meanwhile, so no si_updatexenvm or rebuild runs."
    ),
    # from the reversal's own data (capture/reverse.py), so the page says what the code does
    "extra": (("WHAT V2P UNDOES", "Without --keep-xen, each fixup's changes are undone so:\n\n"
               + "\n\n".join(f"{name}: {how}." for name, how in REVERSAL.items())),),
    "files": "/var/lib/systemimager/images/IMAGE  the image (SystemImager's DEFAULT_IMAGE_DIR)\n"
             "/etc/systemimager/rsync_stubs/40IMAGE  its rsync stub\n"
             "/etc/systemimager/getimage.exclude  what is not copied",
    "see_also": "si_getimage(8), si_mkxenvm(8), si_lsxenvm(8), si_mkrsyncd_conf(8), si-xen.conf(5)",
}


def build_parser():
    p = parser(PROG, "Capture a Xen VM made by si_mkxenvm into a SystemImager image (si_getimage for VMs).")
    p.add_argument("names", nargs="+", metavar="NAME IMAGE", help="the VM, then the image's name")
    p.add_argument("--from-disk", metavar="FILE", help="capture another hypervisor's disk image (raw, qcow2, vmdk, vhd(x))")
    p.add_argument("--keep-xen", action="store_true", help="keep the VM's Xen fixups: a Xen-ready image (identity removed all the same)")
    p.add_argument("--snapshot", action="store_true", help="read a running VM from a copy-on-write snapshot of its disks")
    p.add_argument("--force", action="store_true", help="replace an existing image (in one rename)")
    p.add_argument("--update", action="store_true", help="refresh an existing image, copying only what changed")
    p.add_argument("--config", help="config file (default /etc/systemimager/xen.conf)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only warnings and errors")
    p.add_argument("--verbose", "-v", action="store_true", help="print each command and excluded pattern")
    return p


def body(argv) -> int:
    args = build_parser().parse_args(argv)
    from ..capture import service

    want = 1 if args.from_disk else 2
    if len(args.names) != want:
        raise Fatal("give the VM and the image's name" if want == 2 else "with --from-disk, give only the image's name",
                    f"{PROG} NAME IMAGE, or {PROG} --from-disk FILE IMAGE")
    if args.force and args.update:
        raise Fatal("--force and --update contradict each other", "give one of them")
    need_root(PROG)
    req = service.Request(args.names[-1], None if args.from_disk else args.names[0], args.from_disk, args.keep_xen,
                          args.snapshot, args.force, args.update)
    settings = config.load(args.config)
    rep = Reporter(quiet=args.quiet, verbose=args.verbose)
    try:
        r = service.capture(req, settings, rep.say)
        rep.say(f"Captured {req.vm or req.from_disk} into image {r.image} at {r.path}: {r.entries} entries, "
                f"{r.bytes / 2**20:.1f} MiB ({r.written / 2**20:.1f} MiB copied) in {r.seconds} s")
        rep.say(f"  excluded: {len(r.excluded)} patterns ({r.exclude_source}, what si_mkxenvm never copies, "
                f"network mounts)")
        for p in r.excluded:
            rep.detail(f"    {p}")
        gone = [p for p in ("/etc/ssh/ssh_host_*", "/etc/hostname") if p in r.excluded]
        rep.say(f"  identity removed: {', '.join(r.identity) or 'nothing left to remove'}"
                + (f" ({' and '.join(gone)} not copied: getimage.exclude)" if gone else ""))
        for line in r.not_reversed:
            rep.warn(f"not reversed: {line}")
        for note in r.notes:
            rep.say(f"  {note}")
        rep.say(f"  rsync stub: {r.stub} " + ("(si_mkrsyncd_conf run: the rsync daemon serves it)" if r.served
                                               else "(run si_mkrsyncd_conf to serve it)"))
    finally:
        rep.close()
    return 0


def main(argv=None) -> int:
    sys.exit(run_main(PROG, body, argv))


if __name__ == "__main__":
    main()
