"""The xen-tools entry points: one hook executable per fixup (``hook_main``) and the role
script (``role_main``), as hooks/ and xentools.install write them.

The xen-tools contract (reference xen-tools.md §1.2): ``$1`` is the guest root, settings
come only from the environment (read by the xen-tools adapter into the spec), exit 0 on
success, a second run changes nothing.
"""

from __future__ import annotations

import os
import sys

from si_xen.errors import Fatal
from si_xen.fixups.runner import run_all
from si_xen.fixups.xentools import spec_from_env


def hook_main(name: str, argv: list[str] | None = None) -> int:
    """Entry point of one ``hooks/NN-name`` executable."""
    argv = sys.argv[1:] if argv is None else argv
    prog = f"si-xen hook {name}"
    if len(argv) != 1 or not argv[0]:
        print(f"FATAL: {prog}: usage: HOOK PREFIX (the mounted guest root)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(msg, file=sys.stderr if msg.startswith("WARNING:") else sys.stdout, flush=True)

    try:
        run_all(argv[0], spec_from_env(os.environ), only=[name], log=log, xen_tools=True)
    except Fatal as e:
        print(f"FATAL: {prog}: {e}", file=sys.stderr)
        return 1
    return 0


def role_main(argv: list[str] | None = None) -> int:
    """xen-tools role script: every fixup, after the hooks (resolv.conf is the guest's again)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("FATAL: si-xen role: usage: ROLE PREFIX [ARGS]", file=sys.stderr)
        return 2
    env = dict(os.environ)
    if env.get("ip", "").startswith("ARRAY(") and not env.get("ip1"):
        print("WARNING: si-xen role: --hooks=0 hides the --ip addresses from roles; configuring DHCP",
              file=sys.stderr)
    try:
        run_all(argv[0], spec_from_env(env), log=lambda m: print(m, flush=True))
    except Fatal as e:
        print(f"FATAL: si-xen role: {e}", file=sys.stderr)
        return 1
    return 0
