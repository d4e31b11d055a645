"""The image of a deploy: local, or from an image server (cluster.txt when no image is
named, the pull into this host's cache, the server's disk layout), with its overrides."""

from __future__ import annotations

from contextlib import nullcontext

from ..errors import Fatal
from . import Image, open_at, open_image, open_with_overrides


def select(name: str | None, server: str | None, overrides: list[str], ssh_user: str | None,
           hostname: str | None, paths: dict[str, str], say, prog: str = "si_mkxenvm") -> Image:
    """The image a deploy reads, as si_mkxenvm and the Ganeti OS scripts take it: ``name`` in
    the local store (a path too), or pulled from ``server``; ``overrides`` laid over it."""
    if not server:
        if ssh_user:
            raise Fatal("--ssh-user needs an image server", "give --server HOST[:PORT]")
        if not name:
            raise Fatal("no image given", f"{prog} IMAGE --hostname NAME ... (si_lsimage lists the images)")
        return open_with_overrides(name, overrides, paths, say) if overrides else open_image(name)
    if name and "/" in name:
        raise Fatal(f"--server takes an image name, not a path ('{name}')", "give the image's name on the server")
    return from_server(server, name, overrides, hostname, ssh_user, paths, say)[0]


def from_server(server_text: str, name: str | None, overrides: list[str], hostname: str | None,
                ssh_user: str | None, paths: dict[str, str], say) -> tuple[Image, list[str]]:
    """(the image, the overrides applied) pulled from ``server_text``; ``say`` gets one line per
    transfer (its rsync stats)."""
    from . import remote  # the server's side loads only for a server's image
    from .cache import Cached

    server = remote.parse_server(server_text)
    with remote.Tunnel(ssh_user, server) if ssh_user else nullcontext(server) as via:
        if not name:
            name, listed = remote.from_cluster(via, hostname or "")
            overrides = listed + [o for o in overrides if o not in listed]
        remote.check_name(name, "image", server)
        for o in overrides:
            remote.check_name(o, "override", server)
        c = Cached(paths["cache_dir"], paths["lock_dir"], server, name, via=via)
        with c.lock():
            gen, st = c.update()
            if st is None:
                say(f"Image '{name}' from {server}: cached copy is current")
            else:
                say(f"Pulled image '{name}' from {server}: {st['files']} files transferred, {st['bytes']} bytes received")
            path = gen
            if overrides:
                path, done = c.view(gen, overrides)
                for o, n in zip(overrides, done, strict=False):
                    say(f"Override '{o}': {n} files transferred")
            layout_text = c.layout(gen)
    return open_at(name, path, lambda: layout_text), overrides
