"""systemimager: the VM remembers which image it came from, so si_updateclient works in it."""

from __future__ import annotations

from si_xen.fixups.base import Ctx, fixup


@fixup("systemimager", 95, "systemimager")
def systemimager(ctx: Ctx) -> None:
    """Record the image name in /etc/systemimager/IMAGE_LAST_SYNCED_TO.

    One line, the image's name, as SystemImager's installer and si_updateclient write it: the
    name the image has on its server or in the store, not the directory it was read from (a
    cache generation or a view with overrides); as a xen-tools hook, the basename of
    install_source. Nothing is written when there is no image.
    """
    if not ctx.s.image_name:
        return
    ctx.write("etc/systemimager/IMAGE_LAST_SYNCED_TO", ctx.s.image_name + "\n")
