"""si_xenhooks: list, run, and install into xen-tools the si-xen guest fixups."""

from __future__ import annotations

import os
import sys

from ..errors import Fatal
from ..fixups import FIXUPS, run_all, xentools
from ..fixups.xentools import spec_from_env
from .common import need_root, parser, run_main

PROG = "si_xenhooks"


def _fixup_help() -> str:
    return "fixups, in order:\n" + "\n".join(
        f"  {f.hook:<22} {f.summary}" for f in FIXUPS)


def build_parser():
    p = parser(PROG, "Guest fixups that make a SystemImager image boot as a Xen guest, usable\n"
               "directly, from si_mkxenvm, or as xen-tools hooks (xen-create-image --dist=systemimager).\n\n"
               + _fixup_help())
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.add_parser("list", help="each fixup: its hook, its name and what it does")
    r = sub.add_parser("run", help="run the fixups on a guest root; settings from xen-tools' env names")
    r.add_argument("prefix", metavar="PREFIX", help="the guest root (mounted VM filesystem)")
    r.add_argument("--only", help="comma separated fixups to run (names or NN-name hooks)")
    r.add_argument("--skip", help="comma separated fixups not to run")
    r.add_argument("--xen-tools", action="store_true",
                   help="nameservers to etc/resolv.conf.old, as inside xen-create-image")
    for name, what in (("install-xen-tools", "install"), ("uninstall-xen-tools", "remove")):
        i = sub.add_parser(name, help=f"{what} the xen-tools hook set ({xentools.HOOK_DIR}) and role script")
        i.add_argument("--root", "--prefix", dest="root", default="/",
                       help="install below this directory instead of / (for tests and packaging)")
        if name == "install-xen-tools":
            i.add_argument("--force", action="store_true", help="overwrite files si-xen did not write")
    g = sub.add_parser("install-ganeti-os", help="write Ganeti's systemimager OS definition (si-xen-ganeti(7)); "
                       "the Debian package ships it")
    g.add_argument("--dest", default=None, help="the OS directory (default /usr/share/ganeti/os/systemimager)")
    v = sub.add_parser("ganeti-variants", help="list the images as the Ganeti OS's variants (systemimager+IMAGE): "
                       "run it after si_getimage adds or removes an image")
    v.add_argument("--server", metavar="HOST[:PORT]", help="the images of this image server, not the local ones")
    v.add_argument("--output", default=None, help="the variants file (default /var/lib/si-xen/ganeti/variants.list)")
    return p


def _ganeti(args) -> int:
    from ..ganeti import osdef

    if args.cmd == "install-ganeti-os":
        dest = args.dest or osdef.OS_DIR
        changed = osdef.write(dest)
        print(f"{dest}: {', '.join(changed) if changed else 'up to date'}")
        return 0
    if args.server:
        from ..image import remote

        names = remote.list_modules(remote.parse_server(args.server))
    else:
        from ..image.store import list_images

        names = [n for n, _ in list_images()]
    out = args.output or osdef.VARIANTS
    osdef.write_variants(names, out)
    print(f"{out}: {' '.join(names) or '(no images)'}")
    return 0


def _list() -> None:
    width = max(len(f.hook) for f in FIXUPS)
    for f in FIXUPS:
        print(f"{f.hook:<{width}}  {f.name:<12}  {f.summary}")


def _body(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in (None, "list"):
        _list()
        return 0
    if args.cmd == "run":
        if not os.path.isdir(args.prefix):
            raise Fatal(f"guest root {args.prefix} is not a directory", "give the mounted guest root")
        results = run_all(args.prefix, spec_from_env(os.environ), only=args.only, skip=args.skip,
                          xen_tools=args.xen_tools)
        if not any(ch for _, ch in results):
            print("nothing to change")
        return 0
    if args.cmd in ("install-ganeti-os", "ganeti-variants"):
        return _ganeti(args)
    if args.root in ("/", ""):
        need_root(PROG)
    if args.cmd == "install-xen-tools":
        xentools.install(args.root, force=args.force)
        print(f"use: xen-create-image --dist={xentools.DIST} --install-method=copy --install-source=IMAGE_DIR ...")
    else:
        xentools.uninstall(args.root)
    return 0


def main(argv=None) -> int:
    return run_main(PROG, _body, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
