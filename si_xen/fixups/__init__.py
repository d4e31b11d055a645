"""The guest fixups: what makes a SystemImager image boot right as a Xen guest.

``FIXUPS`` is the ordered registry (name, order, hook, summary, help); ``run_all``
applies them in-process to a mounted guest root, described by a GuestSpec (fixups.spec).
"""

from __future__ import annotations

from si_xen.fixups import (  # noqa: F401  (imported to register their fixups)
    clock,
    cloudinit,
    console,
    disks,
    identity,
    kernel,
    macs,
    network,
    systemimager,
)
from si_xen.fixups.base import Fixup, ordered
from si_xen.fixups.runner import run_all

FIXUPS: list[Fixup] = ordered()


def by_name(name: str) -> Fixup:
    for f in FIXUPS:
        if name in (f.name, f.hook):
            return f
    raise KeyError(name)


__all__ = ["FIXUPS", "Fixup", "by_name", "run_all"]
