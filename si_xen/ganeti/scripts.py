"""The OS definition's scripts (create import export rename verify): each a two-line file
calling ``main(NAME)``. A failure ends with one FATAL line on stderr, the last line of
Ganeti's OS log, which Ganeti shows in the job's error."""

from __future__ import annotations

import os
import sys

from ..cli.common import run_main
from ..errors import Fatal, UsageError
from ..report import Reporter
from . import install, params
from .env import instance, osp_of

SCRIPTS = ("create", "import", "export", "rename", "verify")
USAGE = {s: "" for s in SCRIPTS} | {"verify": "parameters"}


def verify(env: dict[str, str]) -> list[str]:
    """``verify parameters``: every OSP_* value, and that the image they name exists here
    (an image server's images are checked when an instance is made)."""
    osp = osp_of(env)
    found = params.problems(osp)
    name = env.get("OS_VARIANT") or osp.get("image")
    if not found and name and not osp.get("server"):
        from ..image.store import resolve

        try:
            resolve(name)
        except Fatal as e:
            found.append(str(e))
    return found


def body(script: str, argv: list[str], env: dict[str, str]) -> int:
    want = USAGE[script].split()
    if argv != want:
        raise UsageError(f"usage: {script} {USAGE[script]}".rstrip(),
                         "this script of the systemimager OS is run by Ganeti (ganeti-os-interface(7))")
    if script == "verify":
        found = verify(env)
        for why in found:
            print(why, file=sys.stderr)
        return 1 if found else 0
    inst = instance(env)
    rep = Reporter(verbose=inst.debug > 0, stream=sys.stderr if script == "export" else None)
    try:
        if script == "create":
            install.create(inst, rep)
        elif script == "export":
            install.export(env, inst)
        elif script == "import":
            install.import_(env, inst, rep)
        else:
            install.rename(inst, rep)
    finally:
        rep.close()
    return 0


def main(script: str, argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    sys.exit(run_main(f"systemimager/{script}", lambda a: body(script, a, dict(os.environ)), argv))
