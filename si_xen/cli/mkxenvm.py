"""si_mkxenvm: deploy a Xen VM from a SystemImager image in one command."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING

from .. import batch, config
from ..errors import Fatal
from ..headstart import Headstart
from ..report import Reporter
from ..rollback import Guard
from .common import confirm, need_root, parser, run_main

if TYPE_CHECKING:
    from ..record import VmRecord

PROG = "si_mkxenvm"
MAN = {
    "summary": "deploy a Xen virtual machine from a SystemImager image",
    "synopsis": "[IMAGE] --hostname NAME (--dhcp | --ip ADDR --netmask MASK) (--dir DIR | --lvm VG) [OPTION]...\n"
                "--rebuild NAME [--image IMAGE] [--keep-old] [--restart [--timeout S]] [OPTION]...",
    "description": (
        "si_mkxenvm turns a SystemImager image (a directory tree under /var/lib/systemimager/images) into a\n"
        "Xen virtual machine in one command: it validates everything first, creates the VM's disks (sparse files\n"
        "or logical volumes), copies the image in with rsync as SystemImager installs a client (owners, modes,\n"
        "hard links, ACLs, xattrs, device nodes, sparse files), applies the guest fixups for Xen (the hooks that\n"
        "si_xenhooks(8) lists: fstab, hostname, console on hvc0, network, fresh identity...), makes the guest\n"
        "bootable, writes the domain config and, with --start, starts the domain.\n\n"
        "The image is never modified. Nothing existing is overwritten without --force. A failure, SIGINT,\n"
        "SIGTERM or SIGHUP at any step removes everything made so far: no loop device, mount, LV, disk, config\n"
        "or lock stays behind. Once the domain exists (xl create succeeded) nothing undoes it: --console\n"
        "attaches the console after the deploy, and however the console ends (Ctrl-], a dropped session's\n"
        "SIGHUP, SIGINT, SIGTERM, the console failing) only the console ends; the VM keeps running.\n"
        "A copy of an image that changed while it was copied is not kept: the VM is made again from the\n"
        "image as it is now, at most 3 times. Memory is checked against what the guest's kernel and initramfs\n"
        "need to boot.\n\n"
        "--rebuild NAME makes an existing VM again, fresh, from its image's current generation (or --image):\n"
        "the self-healing reinstall. It keeps the VM's name, MAC, addresses, memory, vcpus, type and boot,\n"
        "config path and autostart (its record's options; options given override them) and carries its\n"
        "identity from the old disk, byte for byte: every SSH host key (and each HostKey of its sshd config),\n"
        "/etc/machine-id and /var/lib/dbus/machine-id when that is a file. What the VM had of its own is not\n"
        "kept: the disks are new (si_updatexenvm(8) keeps local data). The order loses nothing: the identity is\n"
        "copied to STATE_DIR/carry/NAME, the journal keeps the old VM's, the old config, autostart link, kernel\n"
        "copies and disks are renamed aside (*.si-old, hidden in the autostart directory) until the new VM is\n"
        "recorded, then removed (--keep-old keeps the old disks, listed with the VM and removed by\n"
        "si_rmxenvm). A failure or signal before that puts the VM back exactly as it was; after a crash the\n"
        "next --rebuild rolls back (or, once recorded, tidies) first, and si_rmxenvm removes old and new.\n"
        "A running VM is refused unless --restart: a clean shutdown within --timeout (never a destroy),\n"
        "and the VM is started again. A --toolstack libvirt VM stays the same libvirt domain (its name and\n"
        "uuid): its new XML is defined over the old definition, which the journal keeps (as libvirtd held\n"
        "it) until the new VM is recorded; a failure defines the old one again, never undefines the domain.\n"
        "Its autostart is the record's, its shutdown and start libvirt's. A VM moves into or out of libvirt\n"
        "only by si_rmxenvm and a new si_mkxenvm. A VM made by si-xen < 0.2 has no recorded options: the FATAL names them.\n\n"
        "Defaults come from /etc/systemimager/xen.conf (si-xen.conf(5)); options override them."
    ),
    "examples": (
        "The seed article's deployment, in si_mkxenvm's terms:\n"
        "  si_mkxenvm ubuntu7_10 --hostname ubuntu --memory 256M --size 2Gb --swap 128Mb \\\n"
        "      --dhcp --dir /home/xen\n\n"
        "A static address, LVM storage, started with its console attached:\n"
        "  si_mkxenvm debian12 --hostname web01 --ip 192.168.1.10/24 --gateway 192.168.1.1 \\\n"
        "      --lvm vg0 --console\n\n"
        "Make web01 again from the image's newest generation, keeping its identity, while it runs:\n"
        "  si_mkxenvm --rebuild web01 --restart\n\n"
        "Show what would be done:\n"
        "  si_mkxenvm debian12 --hostname web02 --dhcp --dir /srv/xen --dry-run"
    ),
    "files": (
        "/etc/systemimager/xen.conf  defaults and per-image settings\n"
        "/etc/systemimager/xen/xl.cfg.j2  a template overriding the shipped one\n"
        "/etc/xen/HOSTNAME.cfg  the domain config (--output, --extension)\n"
        "/var/lib/si-xen/vms/HOSTNAME.journal  what was made, written before it was made, for si_lsxenvm and si_rmxenvm\n"
        "/var/lib/si-xen/carry/HOSTNAME  a rebuild's copy of the VM's identity, while it runs\n"
        "/var/log/si-xen/HOSTNAME.log  the log of each deploy"
    ),
    "exit_status": ("With --start or --console, 0 means the VM was made and its domain started: a console "
                    "that exits non-zero or is ended by a signal does not change that (its end is said in one line)."),
    "see_also": "si_lsxenvm(8), si_rmxenvm(8), si_xenhooks(8), si-xen.conf(5), xl.cfg(5), xen-create-image(8), si_lsimage(8)",
}


def _default(key: str) -> str:
    """Help shows the built-in default from the one place it is set (config.BUILTIN)."""
    return f"(default {config.BUILTIN[key]})"


def build_parser() -> argparse.ArgumentParser:
    p = parser(PROG, "Create a Xen virtual machine from a SystemImager image: disks, a copy of the image,\n"
               "guest fixups for Xen, the domain config, and (with --start) the running domain.")
    p.add_argument("image_pos", nargs="?", metavar="IMAGE", help="image name (or path); same as --image")
    a = p.add_argument
    a("--image", help="SystemImager image name, looked up like si_lsimage does, or a path")
    a("--server", metavar="HOST[:PORT]", help="pull the image from this SystemImager image server's rsync daemon "
      "into this host's cache (only changes travel); without an image, the host's image and overrides come "
      "from the server's scripts/cluster.txt")
    a("--ssh-user", dest="ssh_user", metavar="USER", help="reach the --server's rsync daemon through an ssh "
      "tunnel as USER, as SystemImager's tools do")
    a("--override", action="append", metavar="NAME", help="lay SystemImager's override NAME over the image "
      "(the server's with --server, else DEFAULT_OVERRIDE_DIR/NAME; repeatable, in order, later wins; "
      "the image itself is never changed), after those SystemImager's installer lays where they exist: "
      "the one named like the image, the host's cluster.txt groups, the one named like the host")
    a("--hostname", help="the VM's hostname, also its Xen domain name (required); a list or pattern such as "
      "web[01-20] makes a batch, in parallel, with consecutive --ip addresses")
    g = p.add_argument_group("size")
    g.add_argument("--memory", help=f"memory, e.g. 512M or 1G {_default('memory')}")
    g.add_argument("--maxmem", help="maximum memory for ballooning")
    g.add_argument("--vcpus", help=f"virtual CPUs {_default('vcpus')}")
    g.add_argument("--size", help=f"root filesystem size, e.g. 2G, 2Gb, 2048 (MiB) {_default('size')}")
    g.add_argument("--swap", help=f"swap size {_default('swap')}; 0 for none")
    g.add_argument("--noswap", action="store_true", default=None, help="no swap disk")
    g.add_argument("--fs", help=f"root filesystem: ext3, ext4, xfs {_default('fs')}")
    g.add_argument("--layout", help="'default' (root + swap) or 'image' (the golden client's filesystems)")
    g = p.add_argument_group("network")
    g.add_argument("--dhcp", action="store_true", default=None, help="configure the NIC by DHCP")
    g.add_argument("--ip", action="append", help="static address (repeatable), A.B.C.D or A.B.C.D/NN")
    g.add_argument("--netmask", help="netmask for --ip, e.g. 255.255.255.0 or 24")
    g.add_argument("--gateway", help="default gateway")
    g.add_argument("--broadcast", help="broadcast address")
    g.add_argument("--nameserver", help="name servers, space or comma separated")
    g.add_argument("--mac", help="MAC address (default: stable per hostname, Xen OUI 00:16:3e)")
    g.add_argument("--bridge", help=f"dom0 bridge for the vif {_default('bridge')}")
    g = p.add_argument_group("storage and output")
    g.add_argument("--dir", help="store disks as sparse files under DIR/domains/HOSTNAME/")
    g.add_argument("--lvm", metavar="VG", help="store disks as logical volumes HOSTNAME-NAME in VG")
    g.add_argument("--thin-pool", dest="thin_pool", metavar="POOL",
                   help="with --lvm: thin LVs in this pool of VG; VMs are thin snapshots of the image's base LV")
    g.add_argument("--full-copy", action="store_true", default=None,
                   help="copy the image into every VM, even where a reflink clone of its base disk is possible")
    g.add_argument("--output", help=f"directory for the domain config {_default('output')}")
    g.add_argument("--extension", help=f"config file extension {_default('extension')}")
    g = p.add_argument_group("boot")
    g.add_argument("--type", help=f"guest type: pv or pvh {_default('type')}")
    g.add_argument("--boot", help=f"direct (guest's kernel handed to Xen), pygrub or pvgrub2 {_default('boot')}")
    g.add_argument("--kernel", help="a Xen-capable kernel to boot instead of the guest's own")
    g.add_argument("--initrd", help="the initrd for --kernel")
    g.add_argument("--initramfs", help="auto: a Xen-sized initramfs made from the image's (its Xen drivers, root "
                   "filesystem and what it loads by name; read as data, nothing of the guest run) where that is at "
                   "most half of it; slim: always that one; image: the image's own "
                   f"{_default('initramfs')}")
    g = p.add_argument_group("activation")
    g.add_argument("--start", action="store_true", default=None, help="start the VM when it is made")
    g.add_argument("--console", action="store_true", default=None, help="start it and attach its console")
    g.add_argument("--autostart", action="store_true", default=None, help="link the config into auto/ beside it (/etc/xen/auto), where xendomains starts domains at boot "
                   "(--toolstack libvirt: libvirt's autostart instead, never both)")
    g.add_argument("--toolstack", help="xl, xm, libvirt or auto (xl, else xm; never libvirt): libvirt defines the VM in "
                   f"libvirtd's libxl driver (virsh -c xen:///system), --autostart is then libvirt's {_default('toolstack')}")
    g = p.add_argument_group("cloud-init")
    g.add_argument("--cloud-init", dest="cloud_init", help="auto: a NoCloud seed where the image has cloud-init "
                   f"(not disabled); off: disable its cloud-init {_default('cloud_init')}")
    g.add_argument("--user-data", dest="user_data", metavar="FILE",
                   help="cloud-init user-data for the seed: a '#cloud-config' YAML document or a '#!' script")
    g = p.add_argument_group("behaviour")
    g.add_argument("--fixups", help="run only these fixups (comma separated; si_xenhooks list)")
    g.add_argument("--skip-fixups", dest="skip_fixups", help="fixups not to run (comma separated)")
    g.add_argument("--config", help="config file (default /etc/systemimager/xen.conf)")
    g.add_argument("--dry-run", action="store_true", help="validate and print the plan; change nothing")
    g.add_argument("--force", action="store_true", default=None, help="overwrite an existing VM of the same name")
    g.add_argument("--yes", "-y", action="store_true", help="answer yes to questions")
    g = p.add_argument_group("rebuild")
    g.add_argument("--rebuild", metavar="NAME", help="make VM NAME again from its image's current generation "
                   "(or --image), keeping its name, MAC, addresses, SSH host keys, machine-id, memory, vcpus, boot, "
                   "config and autostart from its record and old disk; other options given override the record's")
    g.add_argument("--keep-old", dest="keep_old", action="store_true", help="with --rebuild: keep the old disks "
                   "(renamed *.si-old, listed with the VM, removed by si_rmxenvm) instead of removing them")
    g.add_argument("--restart", action="store_true", help="with --rebuild: shut a running VM down cleanly "
                   "first (never destroyed) and start it again after")
    g.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="with --restart: seconds the shutdown may take (default 120)")
    g.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    g.add_argument("--verbose", "-v", action="store_true", help="print every change and command")
    return p


def options(args, settings) -> dict:
    """The options as given, over xen.conf's (Request.from_options adds the built-in defaults)."""
    o = dict(settings.options)
    o.update({k: v for k, v in vars(args).items() if v is not None})
    o["size_given"] = args.size is not None
    o["hostname"] = args.hostname
    return o


def body(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.rebuild:
        return rebuild(args)
    if args.keep_old or args.restart:
        raise Fatal(f"{'--keep-old' if args.keep_old else '--restart'} is for --rebuild", "add --rebuild NAME, or leave it out")
    if args.image and args.image_pos and args.image != args.image_pos:
        raise Fatal(f"two images given ('{args.image_pos}' and '{args.image}')", "give one image")
    if not args.hostname:
        raise Fatal("no --hostname given", "name the VM with --hostname NAME")
    hosts = batch.expand(args.hostname)
    if args.console and len(hosts) > 1:
        raise Fatal("--console attaches the console of one VM, not of a batch", "use --start, then xl console NAME")
    if not args.dry_run:
        need_root(PROG)
    image, source = _image(args, args.image or args.image_pos)
    settings = config.load(args.config, image.name)
    # Begun before the options are checked: a bad one costs a walk stopped and keys put back.
    hs = Headstart.start(image, hosts, settings.paths["state_dir"], args.dry_run)
    rep = Reporter(quiet=args.quiet, verbose=args.verbose)
    try:
        # Imported only now, with the walk and the SSH keys begun: these take a tenth of a second.
        from .. import service
        from ..request import Request

        req = Request.from_options(options(args, settings))
        if not image.os.known:  # said before the long copy: the fixups will do only what any Linux needs
            rep.warn(f"unknown OS in image '{image.name}' ({image.os.pretty}): generic {image.os.init} handling only")
        guard = Guard()
        out = service.make_vms(req, image, settings, rep, hs, guard, ask=lambda q: confirm(q, args.yes), source=source)
        if req.dry_run:
            _dry_run(out.plans)
        elif len(out.plans) == 1:
            summary(out.records[0], out.plans[0], rep, settings)
            if req.activation.console or guard.got:
                _console(out.plans[0], guard, rep)
    finally:
        hs.close()
        rep.close()
    return 0


# Options that are not the VM's (or that --rebuild takes from elsewhere): never recorded overrides.
NOT_OVERRIDES = ("image_pos", "image", "server", "ssh_user", "override", "hostname", "config", "dry_run", "force", "yes",
                 "quiet", "verbose", "rebuild", "keep_old", "restart", "timeout", "console")


def overrides(args) -> dict:
    """The options said with --rebuild, as Request.from_options takes them, over the record's."""
    o = {k: v for k, v in vars(args).items() if v is not None and k not in NOT_OVERRIDES}
    o["size_given"] = args.size is not None or None
    if args.dir or args.lvm:  # the other storage kind the record names goes
        o.update(dir=args.dir, lvm=args.lvm, thin_pool=args.thin_pool)
    if args.ip:
        o["dhcp"] = False
    elif args.dhcp:
        o.update(ip=(), netmask="", gateway="", broadcast="")
    if args.console:
        o["start"] = True
    return {k: v for k, v in o.items() if v is not None or k in ("dir", "lvm", "thin_pool")}


def rebuild(args) -> int:
    """si_mkxenvm --rebuild NAME: its record read first, for the image and where it came from."""
    from .. import journal, service

    name = args.rebuild
    if args.hostname and args.hostname != name:
        raise Fatal(f"--rebuild {name} and --hostname {args.hostname} name two VMs", "give --rebuild NAME alone")
    if args.image and args.image_pos and args.image != args.image_pos:
        raise Fatal(f"two images given ('{args.image_pos}' and '{args.image}')", "give one image")
    if not args.dry_run:
        need_root(PROG)
    settings = config.load(args.config)
    state = journal.load(settings.paths["state_dir"], name)
    if state is None:
        raise Fatal(f"no VM '{name}' made by si_mkxenvm", "si_lsxenvm lists the VMs")
    rec = state.record or state.begin
    src = (rec.source if rec else {}) or {}
    image_name = args.image or args.image_pos or (rec.image if rec else "")
    args.hostname = name
    args.server = args.server or src.get("server") or None
    args.ssh_user = args.ssh_user or src.get("ssh_user") or None
    args.override = args.override or list(src.get("overrides") or ()) or None
    image, source = _image(args, image_name)
    settings = config.load(args.config, image.name)
    # The walk only: the keys are carried (a type the old VM lacks is made by the identity fixup).
    hs = Headstart.start(image, [], settings.paths["state_dir"], args.dry_run)
    rep = Reporter(quiet=args.quiet, verbose=args.verbose)
    try:
        guard = Guard()
        out = service.rebuild_vm(name, overrides(args), image, settings, rep, hs, guard, keep_old=args.keep_old,
                                 restart=args.restart, timeout=args.timeout, source=source, dry_run=args.dry_run)
        if args.dry_run:
            _dry_run(out.plans)
        else:
            summary(out.records[0], out.plans[0], rep, settings)
            if args.console or guard.got:
                _console(out.plans[0], guard, rep)
    finally:
        hs.close()
        rep.close()
    return 0


def _image(args, name):
    """The local image, or the server's through this host's cache (a dry run fills the cache too),
    and where it came from as the VM's record keeps it (server, ssh_user, overrides named)."""
    settings = config.load(args.config, name)
    o = settings.options
    said = {"server": args.server or o.get("server") or "", "ssh_user": args.ssh_user or o.get("ssh_user") or "",
            "overrides": args.override or o.get("override", "").split()}
    from ..image import source

    rep = Reporter(quiet=args.quiet, verbose=args.verbose)
    try:
        return source.select(name, said["server"] or None, said["overrides"], said["ssh_user"] or None,
                             args.hostname, settings.paths, rep.say), said
    finally:
        rep.close()


def _dry_run(plans) -> None:
    from ..plan import describe

    print(describe(plans[0]))
    for p in plans[1:]:
        print(f"... and {p.hostname}: {' '.join(p.net.ips) or 'DHCP'}, MAC {p.net.mac}, {p.root.target}")
    print("\nDry run: nothing was changed.")


def _console(plan, guard: Guard, rep: Reporter) -> None:
    """After the deploy, outside its rollback: the VM is made and runs, however its console ends.
    A signal that came after the domain was made is said instead of attaching."""
    from .. import toolstack

    ts = toolstack.find(plan.activation.toolstack)
    name = plan.hostname
    again = f"VM {name} keeps running ({ts.shown('console', name)} to attach{' again' if plan.activation.console else ''})"
    if guard.got is not None:  # came once the domain was made: it stays, no console is attached
        line = f"{signal.Signals(guard.got).name} received after the domain was made; {again}"
    else:
        rep.say(f"\nAttaching the console of {name} ({ts.shown('console')}; Ctrl-] detaches)")
        rc, sig = ts.console(name)
        how = f" by {signal.Signals(sig).name}" if sig else (f" (exit status {rc})" if rc else "")
        line = f"console closed{how}; {again}"
    try:
        rep.say(line)
    except OSError:  # the terminal hung up (the log has the line): what is left to print goes nowhere,
        null = os.open(os.devnull, os.O_WRONLY)  # so that no failed flush at exit changes the status
        os.dup2(null, 1)
        os.dup2(null, 2)


def summary(rec: VmRecord, plan, rep: Reporter, settings) -> None:
    rep.say("\nInstallation Summary\n---------------------")
    rep.say(f"Hostname        :  {rec.name}")
    rep.say(f"Distribution    :  {rec.guest}")
    rep.say(f"MAC Address     :  {rec.mac}")
    rep.say(f"IP Address(es)  :  {' '.join(rec.ips) if rec.ips else 'dynamic'}")
    for fp in rec.ssh_fingerprints:
        rep.say(f"SSH Fingerprint :  {fp}")
    rep.say(f"Config          :  {rec.config}")
    rep.say(f"Time            :  {rec.seconds} s")
    if not plan.activation.start:
        from ..toolstack import for_messages

        rep.say(f"Start it with   :  {for_messages(rec.toolstack).start_shown(rec.name, rec.config)}")
    rep.say(f"\nLogfile produced at:\n  {os.path.join(settings.paths['log_dir'], rec.name + '.log')}")


def main(argv=None) -> int:
    sys.exit(run_main(PROG, body, argv))

if __name__ == "__main__":
    main()
