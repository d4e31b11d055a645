"""systemimager: the VM remembers which image it came from, so si_updateclient works in it."""

from __future__ import annotations

from si_xen.fixups.base import Ctx, fixup


@fixup("systemimager", 95, "systemimager")
def systemimager(ctx: Ctx) -> None:
    """Record the image name in /etc/systemimager/IMAGE_LAST_SYNCED_TO.

    The name is the basename of install_source (the image directory), as si_updateclient
    expects; nothing is written when install_source is not set.
    """
    if not ctx.s.image_name:
        return
    ctx.write("etc/systemimager/IMAGE_LAST_SYNCED_TO", ctx.s.image_name + "\n")
