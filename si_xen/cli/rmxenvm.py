"""si_rmxenvm: remove a VM made by si_mkxenvm: config, autostart link, disks, record."""

from __future__ import annotations

import os
import sys

from .. import config, registry, toolstack
from ..errors import Fatal
from ..storage import FileBackend, LvmBackend
from .common import confirm, need_root, parser, run_main

PROG = "si_rmxenvm"


MAN = {
    "summary": "remove a Xen VM made by si_mkxenvm",
    "synopsis": "[--stop] [--keep-disks] [--yes] NAME...",
    "description": (
        "si_rmxenvm removes what si_mkxenvm(8) made for each NAME: the domain config, its autostart link,\n"
        "the kernel files copied out of the guest, the disks (files or logical volumes) and the VM's record.\n"
        "It asks first unless --yes. A running domain is refused unless --stop, which shuts it down (and\n"
        "destroys it if it does not stop)."
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
    rec = registry.load(state_dir, name)
    if rec is None:
        raise Fatal(f"no VM '{name}' made by si_mkxenvm", "si_lsxenvm lists the VMs")
    with registry.lock(settings.paths["lock_dir"], name):
        ts = toolstack.find()
        running = ts is not None and toolstack.hypervisor_running() and name in ts.domains()
        if running and not args.stop:
            raise Fatal(f"VM '{name}' is running", f"add --stop to shut it down, or {ts.name} shutdown {name}")
        disks = [d["target"] for d in rec["disks"]]
        if not confirm(f"Remove VM '{name}' and {'its config' if args.keep_disks else 'its disks ' + ' '.join(disks)}?",
                       args.yes):
            raise Fatal("not confirmed", "nothing was removed")
        if running:
            ts.shutdown(name)
        for path in (rec.get("autostart"), rec["config"], *rec.get("boot_files", [])):
            if path and os.path.lexists(path):
                os.unlink(path)
        backend = (LvmBackend(rec["storage_root"], rec.get("thin_pool")) if rec["storage"] == "lvm"
                   else FileBackend(rec["storage_root"]))
        if not args.keep_disks:
            for target in disks:
                backend.remove(target)
        for d in {os.path.dirname(p) for p in rec.get("boot_files", [])}:
            try:
                os.rmdir(d)
            except OSError:
                pass
        registry.remove(state_dir, name)
        if args.prune_bases:
            in_use = {b for r in registry.all_records(state_dir) for b in r.get("bases", [])}
            for base in set(rec.get("bases", [])) - in_use:
                backend.remove_base(base)
    if not args.quiet:
        print(f"Removed VM '{name}'.")


def main(argv=None) -> int:
    sys.exit(run_main(PROG, body, argv))


if __name__ == "__main__":
    main()
