"""si_rmxenvm: remove a VM made by si_mkxenvm: config, autostart link, disks, record."""

from __future__ import annotations

import sys

from .. import bases, config, initramfs_prune, journal, prune, toolstack
from ..errors import Fatal
from ..made import LibvirtAutostart, LibvirtDefinition
from ..toolstack import libvirt
from .common import confirm, need_root, parser, run_main

PROG = "si_rmxenvm"


MAN = {
    "summary": "remove a Xen VM made by si_mkxenvm",
    "synopsis": "[--stop] [--keep-disks] [--yes] NAME...",
    "description": (
        "si_rmxenvm removes what si_mkxenvm(8) made for each NAME: the domain config, its autostart link,\n"
        "the kernel files copied out of the guest, the disks (files or logical volumes) and the VM's journal,\n"
        "newest first, as the journal names them. A deploy that never finished (killed, or the power went)\n"
        "is removed the same way: its mounts, loop devices, disks and files. It asks first unless --yes.\n"
        "A running domain is refused unless --stop, which shuts it down (and destroys it if it does not stop).\n"
        "A VM of --toolstack libvirt is removed only while libvirtd answers (its domain is undefined):\n"
        "otherwise one FATAL, and nothing is removed.\n"
        "It also prunes the cache of Xen-sized initramfs files (cache_dir/initramfs), as si_updatexenvm(8)\n"
        "and si_mkxenvm --rebuild do: a file stays\n"
        "while a remaining VM's image generation, or an image's current one, boots it (so further VMs of\n"
        f"the image cost nothing), and otherwise until it has not been made or used for {initramfs_prune.UNUSED_DAYS} days."
    ),
    "see_also": "si_mkxenvm(8), si_lsxenvm(8), si-xen.conf(5), xl(1)",
}


def build_parser():
    p = parser(PROG, "Remove Xen VMs made by si_mkxenvm: the domain config, its autostart link,\n"
               "its disks and its kernel files. A running domain is refused unless --stop.")
    p.add_argument("names", nargs="+", metavar="NAME", help="VM (hostname) to remove")
    p.add_argument("--stop", action="store_true", help="shut a running domain down first (destroy if it hangs)")
    p.add_argument("--keep-disks", action="store_true", help="remove the VM but keep its disks")
    p.add_argument("--prune-bases", action="store_true",
                   help="also remove the base disks this VM was cloned from, when no other VM uses them")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.add_argument("--config", help="config file (default /etc/systemimager/xen.conf)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    return p


def body(argv) -> int:
    args = build_parser().parse_args(argv)
    need_root(PROG)
    settings = config.load(args.config)
    for name in args.names:
        remove(name, args, settings)
    return 0


def remove(name: str, args, settings) -> None:
    state_dir = settings.paths["state_dir"]
    if journal.load(state_dir, name) is None:
        raise Fatal(f"no VM '{name}' made by si_mkxenvm", "si_lsxenvm lists the VMs")
    with journal.lock(settings.paths["lock_dir"], name):
        state = journal.load(state_dir, name)  # again: it may have changed before we held the lock
        if state is None:
            raise Fatal(f"no VM '{name}' made by si_mkxenvm", "si_lsxenvm lists the VMs")
        _libvirt_answers(state, name)
        ts = toolstack.find((state.record.toolstack if state.record else "") or "auto")  # a libvirt VM: virsh's
        running = ts is not None and toolstack.hypervisor_running() and name in ts.domains()
        if running and not args.stop:
            raise Fatal(f"VM '{name}' is running", f"add --stop to shut it down, or {ts.shown('shutdown', name)}")
        what = "its config" if args.keep_disks else "its disks " + " ".join(t.path for t in state.things if t.disk)
        if not state.complete:
            what = f"what its unfinished deploy made ({state.summary()})"
        if not confirm(f"Remove VM '{name}' and {what}?", args.yes):
            raise Fatal("not confirmed", "nothing was removed")
        if running:
            ts.shutdown(name)
        journal.remove(state, keep_disks=args.keep_disks)
        if args.prune_bases and state.record:
            bases.prune(state.record, state_dir, settings.paths["lock_dir"])
        prune.unused(state_dir, lambda m: print(f"WARNING: {m}", file=sys.stderr))
    if not args.quiet:
        print(f"Removed VM '{name}'" + ("." if state.complete else " (an unfinished deploy)."))


def _libvirt_answers(state, name: str) -> None:
    """A libvirt VM is removed only while libvirtd answers: without it the undefine fails after
    the disks are gone, leaving a half-removed VM whose domain libvirt still starts at boot."""
    lv = (state.record.toolstack if state.record else "") == "libvirt" or any(
        isinstance(t, (LibvirtDefinition, LibvirtAutostart))
        for t in (*state.update_things, *state.things, *state.replaced_things))
    virsh = libvirt.find_virsh() if lv else None
    if virsh is not None:  # no virsh at all (uninstalled since): the undo names the leftover domain
        virsh.reachable(f"; VM '{name}' is libvirt's, so nothing was removed",
                        f"start libvirtd (systemctl start libvirtd), then run si_rmxenvm {name} again")


def main(argv=None) -> int:
    sys.exit(run_main(PROG, body, argv))


if __name__ == "__main__":
    main()
