"""si_updatexenvm: si_updateclient for Xen VMs — a VM brought to its image's current generation."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .. import config, journal, toolstack
from ..errors import Fatal
from ..report import Reporter
from ..toolstack import libvirt
from .common import need_root, parser, run_main

PROG = "si_updatexenvm"
MAN = {
    "summary": "bring Xen VMs made by si_mkxenvm to their image's current generation",
    "synopsis": "[--image IMAGE] [--no-delete | --delete-local] [--dry-run] [--restart [--timeout S]] NAME...\n"
                "[options] --all IMAGE",
    "description": (
        "si_updatexenvm does for a VM what si_updateclient(8) does for a machine SystemImager installed: the\n"
        "VM's filesystems are brought to the tree si_mkxenvm(8) would deploy now (the image, or --image, with\n"
        "the overrides and image server the VM was made with). Files the image added or changed are copied,\n"
        "files the image removed since the VM's generation are deleted (the image pass's --delete), and a\n"
        "file edited in the VM that the image holds is set back, as si_updateclient does. What the VM has\n"
        "and the image never had (/home, an application's data) is kept unless --delete-local.\n\n"
        "The VM's identity is kept: SSH host keys, machine-id, hostname, network configuration, fstab and\n"
        "leases, whatever the image holds; SystemImager's updateclient.local.exclude (the image's own, else\n"
        "the VM's) and the VM's network mounts are left alone too. The fixups run again where the update\n"
        "touched what they wrote or watch (a new kernel, a changed /etc/hosts). The VM's record gets the\n"
        "new generation (si_lsxenvm --drift shows it). A new kernel boots under the names the config gives\n"
        "(vmlinuz, initrd.img); one that gains or loses an initramfs changes the config's ramdisk line, and a\n"
        "--toolstack libvirt VM's <initrd> is redefined (libvirtd must answer: checked before any change).\n\n"
        "Where the storage can copy on write (a --dir on XFS or btrfs), the update is made on a copy of\n"
        "each disk that replaces it only when complete: a failure leaves the VM as it was. Elsewhere it is\n"
        "made in place under the VM's journal: a failure or crash leaves a VM that si_updatexenvm finishes\n"
        "when run again, or si_rmxenvm(8) removes.\n\n"
        "A running VM is refused unless --restart: then it is shut down through the toolstack (waiting\n"
        "--timeout seconds at most, never destroyed: it keeps running if it does not stop), updated and\n"
        "started again. --dry-run mounts the disks read-only and says what would change.\n\n"
        "--all IMAGE updates every VM made from IMAGE, side by side, one line each; a VM that fails is\n"
        "named at the end and the others are updated."
    ),
    "files": "/var/lib/si-xen/vms/*.journal  each VM's journal and record\n"
             "/var/lib/si-xen/images/manifest-*  each image generation's entries, what an update compares with",
    "see_also": "si_mkxenvm(8), si_lsxenvm(8), si_rmxenvm(8), si_updateclient(8), si-xen.conf(5)",
}


def build_parser():
    p = parser(PROG, "Bring Xen VMs made by si_mkxenvm to their image's current generation, keeping their identity.")
    p.add_argument("names", nargs="*", metavar="NAME", help="VM (hostname) to update")
    p.add_argument("--all", metavar="IMAGE", help="update every VM made from IMAGE (in parallel; one line each)")
    p.add_argument("--image", metavar="IMAGE", help="update to this image instead of the one the VM was made from")
    p.add_argument("--no-delete", action="store_true", help="delete nothing, not even what the image removed")
    p.add_argument("--delete-local", action="store_true",
                   help="also delete what the VM has and the image does not (its own data too)")
    p.add_argument("--dry-run", "-n", action="store_true", help="say what would change; change nothing")
    p.add_argument("--restart", action="store_true", help="shut a running VM down first, start it after")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="with --restart: seconds the VM has to shut down (default 120)")
    p.add_argument("--config", help="config file (default /etc/systemimager/xen.conf)")
    p.add_argument("--quiet", "-q", action="store_true", help="print only warnings and errors")
    p.add_argument("--verbose", "-v", action="store_true", help="print each command and path")
    return p


def body(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.no_delete and args.delete_local:
        raise Fatal("--no-delete and --delete-local contradict each other", "give one of them")
    if bool(args.names) == bool(args.all):
        raise Fatal("name the VMs, or give --all IMAGE" if not args.names else "--all IMAGE updates every VM of an image: "
                    "give no NAME with it", "si_updatexenvm NAME... or si_updatexenvm --all IMAGE")
    need_root(PROG)
    from ..update import Options

    opts = Options("none" if args.no_delete else "local" if args.delete_local else "image", args.dry_run,
                   args.restart, args.timeout)
    settings = config.load(args.config)
    rep = Reporter(quiet=args.quiet, verbose=args.verbose)
    try:
        jobs = _jobs(args, settings, rep)
        if len(jobs) == 1 or opts.dry_run:
            for job in jobs:
                one(job, args.config, opts, rep)
            return 0
        from .. import batch

        _, failed = batch.run(jobs, _worker, (args.config, opts), rep, did="updated")
    finally:
        rep.close()
    if failed:
        raise Fatal(f"{len(failed)} of {len(jobs)} VMs not updated: {'; '.join(failed)}",
                    "fix what each says, then run si_updatexenvm on those VMs again")
    return 0


@dataclass(frozen=True)
class Job:
    """One VM to update and the tree it goes to (resolved once per image and source, in the parent)."""

    hostname: str
    image: str
    path: str


def _jobs(args, settings, rep) -> list[Job]:
    """Every VM named (each must be updatable, or nothing is done), or every complete VM of --all's
    image; the image each goes to, as si_mkxenvm would find it now."""
    from ..image import source

    state_dir = settings.paths["state_dir"]
    if args.all:
        states = [s for s in journal.all_states(state_dir) if s.record is not None and s.record.image == args.all]
        if not states:
            raise Fatal(f"no VM made from image '{args.all}'", "si_lsxenvm lists the VMs and their images")
    else:
        states = [_updatable(journal.load(state_dir, n), n) for n in dict.fromkeys(args.names)]
    trees: dict[tuple, Job] = {}
    jobs = []
    for st in states:
        rec, src = st.record, st.record.source
        key = (args.image or rec.image, src.get("server") or None, tuple(src.get("overrides") or ()),
               src.get("ssh_user") or None)
        if key not in trees:
            paths = config.load(args.config, key[0]).paths
            image = source.select(key[0], key[1], list(key[2]), key[3], rec.name, paths, rep.say)
            trees[key] = Job("", image.name, image.path)
        jobs.append(Job(rec.name, trees[key].image, trees[key].path))
    return jobs


def _worker(job: Job, config_path: str | None, opts):
    """A batch's VM, in its own process: quiet, its own log; its update's time as the batch shows it."""
    from dataclasses import replace

    rep = Reporter(quiet=True)
    try:
        rec = one(job, config_path, opts, rep)
    finally:
        rep.close()
    return replace(rec, seconds=rec.updates[-1]["seconds"])


def one(job: Job, config_path: str | None, opts, rep):
    """Update one VM (or say what an update would do); returns its new record (None: a dry run)."""
    from .. import update
    from ..image import open_at

    name = job.hostname
    settings = config.load(config_path, job.image)
    state_dir = settings.paths["state_dir"]
    _updatable(journal.load(state_dir, name), name)
    image = open_at(job.image, job.path)
    with journal.lock(settings.paths["lock_dir"], name):
        state = _updatable(journal.load(state_dir, name), name)  # under the lock: no other si_* command now
        running = _running(name)
        if running and not (opts.restart or opts.dry_run):
            ts = toolstack.for_messages(state.record.toolstack)
            raise Fatal(f"VM '{name}' is running", f"add --restart, or {ts.shown('shutdown', name)} first")
        if not opts.dry_run and state.record.toolstack == "libvirt" and (virsh := libvirt.find_virsh()):
            virsh.refuse_managed_save(name, "an update")
        if opts.dry_run:
            if state.update:
                rep.warn(f"VM '{name}' has an unfinished update: the figures are those of a part-updated VM")
            _said(rep, name, update.dry_run(state, image, settings, rep, opts, running))
            return None
        rep.open_log(f"{settings.paths['log_dir']}/{name}.log")
        state, rerun_all = update.finish_unfinished(state, settings, rep)
        new = update.update(state, image, settings, rep, opts, running, rerun_all)
        last = new.updates[-1]
        rep.say(f"Updated {name} to {image.name} ({new.image_fingerprint}, {last['mode']}): fetched {last['fetched']}, "
                f"deleted {last['deleted']}, kept local {last['kept_local']}; {last['seconds']} s")
        return new


def _updatable(state, name: str):
    if state is None:
        raise Fatal(f"no VM '{name}' made by si_mkxenvm", "si_lsxenvm lists the VMs")
    if getattr(state, "replaces", None):  # the old VM is set aside, not lost: never send the admin to si_rmxenvm
        raise Fatal(f"VM '{name}' has an unfinished rebuild ({state.summary()})",
                    f"si_mkxenvm --rebuild {name} rolls it back (or finishes it) first")
    if not state.complete:
        raise Fatal(f"VM '{name}' is an unfinished deploy ({state.summary()})", f"si_rmxenvm {name} removes it")
    return state


def _running(name: str) -> bool:
    ts = toolstack.find()
    return ts is not None and toolstack.hypervisor_running() and name in ts.domains()


def _said(rep, name: str, changes) -> None:
    from ..image import manifest

    rep.say(f"{name}: would delete {len(changes.delete)}, fetch {len(changes.fetch)} "
            f"({changes.fetch_bytes >> 20} MiB), keep local {len(changes.kept_local)}; "
            f"fixups to rerun: {', '.join(changes.rerun) or 'none'}")
    for what, paths in (("fetch", changes.fetch), ("delete", changes.delete), ("keep", changes.kept_local)):
        for d, n in manifest.by_dir(paths)[:10]:
            rep.say(f"  {what:<6} {n:>6}  {d}")
        for p in paths:
            rep.detail(f"  {what} {p}")
    rep.say("Dry run: nothing was changed.")


def main(argv=None) -> int:
    sys.exit(run_main(PROG, body, argv))


if __name__ == "__main__":
    main()
