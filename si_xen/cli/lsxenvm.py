"""si_lsxenvm: list the VMs si_mkxenvm made, with their image, disks, config and state."""

from __future__ import annotations

import json
import sys

from .. import config, journal, toolstack
from ..errors import Fatal
from .common import need_root, parser, run_main

PROG = "si_lsxenvm"
MAN = {
    "summary": "list the Xen VMs made by si_mkxenvm",
    "synopsis": "[--json] [NAME]...\n--drift [--json] [--paths] [NAME]...\n--images [--server HOST[:PORT]] [--ssh-user USER] [--json]",
    "description": (
        "si_lsxenvm lists the VMs that si_mkxenvm(8) made: name, image, boot mode, disks and config, and the\n"
        "domain's state when a Xen toolstack answers (running or stopped; unknown without a hypervisor).\n"
        "A deploy that never finished (killed, or the power went) is listed as incomplete, with the step it\n"
        "stopped in; si_rmxenvm(8) removes what it made.\n"
        "A NAME that is not found gives a WARNING and exit status 1.\n\n"
        "With --drift (root only) it compares each VM with the image generation it was made or last updated\n"
        "from: the VM's filesystems are mounted read-only (ext3/ext4 ro,noload; XFS ro,norecovery) in a private\n"
        "mount namespace, so nothing is written to its disks and nothing stays mounted even if si_lsxenvm is\n"
        "killed. A running VM, or a stopped one destroyed rather than shut down (its journals hold changes),\n"
        "is read from copy-on-write copies of its disks, their journals replayed into them: reflinks on a --dir\n"
        "that can reflink, snapshots (tagged si_xen_drift, removed after) in a thin pool; else it is read live, with a\n"
        "WARNING that the figures may be inconsistent. Each difference has a class: image\n"
        "(an image file edited or removed in the VM), local (only in the VM), owned (a file si-xen wrote, changed\n"
        "since), identity and excluded (never copied or updated). It also says whether the image has moved on\n"
        "since, opening it as si_mkxenvm would now (a server's image as this host's cache has it: never pulled).\n"
        "This is rsync's quick check (type, mode, owner, size, mtime to the second), not a checksum of contents.\nA VM that "
        "another si_* command holds shows as busy. --json prints one JSON object per VM; --paths adds every\n"
        "differing path to it.\n\n"
        "With --images it lists the SystemImager images instead, as si_lsimage(8) does: name, retrieval time and\n"
        "golden client, of this host's image store or, with --server, of an image server's rsync daemon;\n"
        "--json prints si_lsimage's JSON lines (image_name, image_timestamp, image_goldenclient)."
    ),
    "exit_status": "si_lsxenvm also exits 1 when a NAME is not found (after listing the others).",
    "files": "/var/lib/si-xen/vms/*.journal  one journal per VM: what its deploy made, and its record",
    "see_also": "si_mkxenvm(8), si_rmxenvm(8), si-xen.conf(5)",
}


def build_parser():
    p = parser(PROG, "List the Xen VMs made by si_mkxenvm.")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these VMs")
    p.add_argument("--json", action="store_true", help="one JSON object per VM, one per line")
    p.add_argument("--drift", action="store_true", help="compare each VM with its image generation (root)")
    p.add_argument("--paths", action="store_true", help="with --drift --json: list every differing path")
    p.add_argument("--images", action="store_true", help="list the SystemImager images, as si_lsimage does")
    p.add_argument("--server", metavar="HOST[:PORT]", help="with --images: the images of this image server")
    p.add_argument("--ssh-user", dest="ssh_user", metavar="USER", help="with --server: through an ssh tunnel as USER")
    p.add_argument("--config", help="config file (default /etc/systemimager/xen.conf)")
    return p


def images(args) -> int:
    """si_lsimage's listing: name, IMAGE_RETRIEVAL_TIME, IMAGE_RETRIEVED_FROM."""
    from contextlib import nullcontext

    from ..image import list_images, read_metadata, remote

    if args.server:
        server = remote.parse_server(args.server)
        with remote.Tunnel(args.ssh_user, server) if args.ssh_user else nullcontext(server) as via:
            rows = [(n, *remote.image_facts(via, n)) for n in remote.list_modules(via)]
    else:
        rows = [(n, m.retrieval_time, m.retrieved_from) for n, m in ((n, read_metadata(p)) for n, p in list_images())]
    rows = [r for r in rows if not args.names or r[0] in args.names]
    if args.json:
        for n, when, client in rows:
            print(json.dumps({"image_name": n, "image_timestamp": when or "", "image_goldenclient": client or ""}))
        return 0
    print("-" * 80)
    print(f"{'IMAGE':<30} {'RETRIEVED':<18} GOLDEN CLIENT")
    print("-" * 80)
    for n, when, client in rows:
        print(f"{n:<30} {when or '-':<18} {client or '-'}")
    return 0


def states() -> dict[str, str] | None:
    """Running domains by name, or None when no toolstack answers (no Xen here)."""
    ts = toolstack.find()
    if ts is None or not toolstack.hypervisor_running():
        return None
    try:
        return ts.domains()
    except Exception:  # a toolstack that cannot answer is "state unknown", not a failure
        return None


def libvirt_state(vm) -> str | None:
    """A --toolstack libvirt VM as libvirt sees it (virsh domstate: ``running``, ``shut off``;
    ``not defined``), or None for the others and when virsh or libvirtd does not answer."""
    if vm.toolstack != "libvirt":
        return None
    from ..toolstack.libvirt import find_virsh

    ts = find_virsh()
    try:
        return None if ts is None else ts.domstate(vm.name) or "not defined"
    except Exception:  # libvirtd away: unknown, as for xl
        return None


def drift(args, settings) -> int:
    from .. import drift as drift_

    states_ = [s for s in journal.all_states(settings.paths["state_dir"]) if not args.names or s.name in args.names]
    running = states()
    for d in drift_.drift(states_, settings, None if running is None else set(running)):
        if args.json:
            print(json.dumps(d.to_json(args.paths), sort_keys=True), flush=True)
        else:
            print("\n".join(d.text()), flush=True)
        if any(n.startswith("WARNING") for n in d.notes):
            for n in d.notes:
                if n.startswith("WARNING"):
                    print(f"{n} ({d.name})", file=sys.stderr)
    return _missing(args.names, [s.name for s in states_])


def _missing(names, found) -> int:
    missing = set(names) - set(found)
    for n in sorted(missing):
        print(f"WARNING: VM '{n}' not found!", file=sys.stderr)
    return 1 if missing else 0


def body(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.images:
        return images(args)
    if args.paths and not args.drift:
        raise Fatal("--paths goes with --drift", "add --drift")
    if args.drift:
        need_root(PROG)  # before anything is read: it mounts the VMs' disks
    settings = config.load(args.config)
    if args.drift:
        return drift(args, settings)
    found = [s for s in journal.all_states(settings.paths["state_dir"]) if not args.names or s.name in args.names]
    vms, updating = [s.vm for s in found], {s.name: s for s in found if s.update is not None}
    rebuilding = {s.name: s for s in found if s.replaces is not None}
    running = states()

    def state(vm) -> str:
        if not vm.complete:
            return "incomplete"
        return "unknown" if running is None else ("running" if vm.name in running else "stopped")

    if args.json:
        for vm in vms:
            extra = {"update_unfinished": updating[vm.name].update} if vm.name in updating else {}
            if (lv := libvirt_state(vm)) is not None:
                extra["libvirt_state"] = lv
            print(json.dumps(dict(vm.to_json(), state=state(vm), **extra), sort_keys=True))
        return 0
    print("-" * 80)
    print(f"{'NAME':<20} {'IMAGE':<18} {'STATE':<8} {'BOOT':<8} DISKS")
    print("-" * 80)
    for vm in vms:
        disks = ", ".join(f"{d.vdev}:{d.mountpoint or 'swap'}:{d.size}" for d in vm.disks)
        print(f"{vm.name:<20} {vm.image:<18} {state(vm):<8} {vm.boot:<8} {disks}")
        print(f"{'':<20} config {vm.config}")
        if (lv := libvirt_state(vm)) is not None:
            print(f"{'':<20} libvirt {lv} (virsh -c xen:///system domstate {vm.name})")
        if vm.name in rebuilding:
            print(f"{'':<20} unfinished rebuild (pid {vm.pid}) stopped in step '{rebuilding[vm.name].step}': "
                  f"si_mkxenvm --rebuild {vm.name} finishes it (si_rmxenvm {vm.name} removes old and new)")
        elif not vm.complete:
            print(f"{'':<20} unfinished deploy (pid {vm.pid}) stopped in step '{vm.step}': "
                  f"si_rmxenvm {vm.name} removes what it made")
        if vm.name in updating:
            u = updating[vm.name]
            print(f"{'':<20} unfinished update (pid {u.update.get('pid', '?')}) stopped in step '{u.update_step}': "
                  f"si_updatexenvm {vm.name} finishes it")
        for base in vm.bases:
            print(f"{'':<20} clone of {base}")
        for old in vm.extra.get("old_disks", ()):
            print(f"{'':<20} old disk kept {old} (--rebuild --keep-old; si_rmxenvm removes it)")
    return _missing(args.names, [vm.name for vm in vms])


def main(argv=None) -> int:
    sys.exit(run_main(PROG, body, argv))


if __name__ == "__main__":
    main()
