"""The image of a deploy: local, or from an image server (cluster.txt when no image is
named, the pull into this host's cache, the server's disk layout), with its overrides laid
over it in SystemImager's order."""

from __future__ import annotations

import os
from contextlib import nullcontext

from ..errors import Fatal
from . import Image, layout_path, local_layout, open_at, store_config
from .store import resolve

# Why an override is laid, in SystemImager's order: its installer's master script sets
# OVERRIDES="IMAGE $GROUP_OVERRIDES $HOSTNAME --overrides" (Server.pm SET_OVERRIDES), the
# host by its short name, and skips any that is not there ("that may be OK").
IMAGE, GROUP, HOST, NAMED = "named like the image", "cluster.txt", "named like the host", "--override"


def order(image: str, groups: list[str], hosts: list[str], named: list[str]) -> list[tuple[str, str]]:
    """(name, why) in SystemImager's order, each name once, at its last place: laying a name
    again puts it on top, so the tree is the one SystemImager's repeated pass gives. A name
    given with --override stays one (it must exist), wherever else it comes from."""
    seq = [(image, IMAGE), *((g, GROUP) for g in groups), *((h.split(".")[0], HOST) for h in hosts),
           *((o, NAMED) for o in named)]
    last = {n: i for i, (n, _) in enumerate(seq)}
    return [(n, NAMED if n in named else why) for i, (n, why) in enumerate(seq) if last[n] == i and n]


def present(wanted: list[tuple[str, str]], there, where: str, fix: str, batch: bool, say) -> list[tuple[str, str]]:
    """The overrides of ``wanted`` to lay: ``there(name)`` is True (it has files), False (empty:
    si_mkautoinstallscript makes IMAGE's, with nothing in it) or None (not there). A named one
    missing is a FATAL; one of cluster.txt is skipped with a word, as SystemImager warns."""
    out = []
    for n, why in wanted:
        got = there(n)
        if got is None and why == NAMED:
            raise Fatal(f"override '{n}' not found {where}", f"{fix}, or drop --override {n}")
        if got is None and why == GROUP:
            say(f"Override '{n}' (cluster.txt) not found {where}: skipped, as SystemImager does")
        if got and why == HOST and batch:
            raise Fatal(f"override '{n}' (named like the host) is there {where}, but a batch shares one image",
                        f"deploy {n} with a --hostname of its own")
        if got or (got is not None and why == NAMED):
            out.append((n, why))
    return out


def report(say, image: str, laid: list[tuple[str, str]], done: list[int], where) -> None:
    """The summary: each override laid, in order, why and where from (``done``: files copied
    per override; empty when the view was already in the cache)."""
    for i, (n, why) in enumerate(laid):
        what = f"{done[i]} files copied" if done else "already in the cached view"
        say(f"Override '{n}' ({why}, {i + 1} of {len(laid)}) from {where(n)}: {what} over image '{image}'")


def hosts_of(hostname: str | None) -> list[str]:
    from ..batch import expand

    return expand(hostname) if hostname else []


def select(name: str | None, server: str | None, overrides: list[str], ssh_user: str | None,
           hostname: str | None, paths: dict[str, str], say, prog: str = "si_mkxenvm") -> Image:
    """The image a deploy reads, as si_mkxenvm and the Ganeti OS scripts take it: ``name`` in
    the local store (a path too), or pulled from ``server``; the overrides laid over it."""
    if not server:
        if ssh_user:
            raise Fatal("--ssh-user needs an image server", "give --server HOST[:PORT]")
        if not name:
            raise Fatal("no image given", f"{prog} IMAGE --hostname NAME ... (si_lsimage lists the images)")
        return from_store(name, overrides, hostname, paths, say)
    if name and "/" in name:
        raise Fatal(f"--server takes an image name, not a path ('{name}')", "give the image's name on the server")
    return from_server(server, name, overrides, hostname, ssh_user, paths, say)[0]


def _groups(text: str | None, hosts: list[str]) -> tuple[str | None, list[str]]:
    """(the image, the group overrides) cluster.txt gives the hosts; a batch whose hosts it
    gives different ones cannot share one image."""
    from .remote import parse_cluster

    got = [parse_cluster(text or "", h) for h in hosts or [""]]
    if len({(i, tuple(g)) for i, g in got}) > 1:
        raise Fatal(f"cluster.txt gives the hosts of '{','.join(hosts)}' different images or overrides",
                    "deploy each group with a --hostname list of its own")
    return got[0]


def from_store(name: str, overrides: list[str], hostname: str | None, paths: dict[str, str], say) -> Image:
    """The local image with the overrides of SystemImager's override dir laid over it (a view
    in si-xen's cache, views.Local), cluster.txt read from its scripts dir."""
    from .views import Local

    cfg = store_config()
    name, path = resolve(name, cfg)
    hosts = hosts_of(hostname)
    try:
        with open(os.path.join(cfg.scripts_dir, "cluster.txt"), encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        text = None

    def there(n: str) -> bool | None:
        p = os.path.join(cfg.overrides_dir, n)
        if not _plain(n) or not os.path.isdir(p):
            return None
        try:
            return bool(os.listdir(p))
        except OSError as e:
            raise Fatal(f"cannot read override {p}: {e.strerror}", "fix its permissions") from None

    laid = present(order(name, _groups(text, hosts)[1], hosts, overrides), there,
                   f"in {cfg.overrides_dir}", f"make the override tree there (DEFAULT_OVERRIDE_DIR, from {cfg.source})",
                   len(hosts) > 1, say)
    if laid:
        path, done = Local(paths["cache_dir"], paths["lock_dir"], name, path, cfg.overrides_dir).view(
            [n for n, _ in laid], cfg.source)
        report(say, name, laid, done, lambda n: os.path.join(cfg.overrides_dir, n))
    return open_at(name, path, lambda: local_layout(cfg, name), layout_path(cfg, name))


def _plain(n: str) -> bool:
    from .remote import NAME_RE

    return bool(NAME_RE.match(n))


def from_server(server_text: str, name: str | None, overrides: list[str], hostname: str | None,
                ssh_user: str | None, paths: dict[str, str], say) -> tuple[Image, list[tuple[str, str]]]:
    """(the image, the overrides laid: (name, why)) pulled from ``server_text``; ``say`` gets
    one line per transfer (its rsync stats) and per override."""
    from . import remote  # the server's side loads only for a server's image
    from .cache import Cached

    server = remote.parse_server(server_text)
    hosts = hosts_of(hostname)
    with remote.Tunnel(ssh_user, server) if ssh_user else nullcontext(server) as via:
        asked = remote.Overrides(via)  # beside cluster.txt's fetch
        try:
            url = via.url("scripts", "cluster.txt")
            text = remote.fetch(via, [url], "scripts/cluster.txt")[url]
            names = asked.names()
        finally:
            asked.stop()
        listed, groups = _groups(text, hosts)
        if not name:
            name = remote.from_cluster(server, text, hostname or "", listed)
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
            laid = present(order(name, groups, hosts, overrides), lambda n: c.has_files(n) if n in names else None,
                           f"on image server {server}", f"rsync {server.url('overrides')}/ lists its overrides",
                           len(hosts) > 1, say)
            path = gen
            if laid:
                path, done = c.view(gen, [n for n, _ in laid])
                report(say, name, laid, done, lambda n: server.url("overrides", n))
            layout_text = c.layout(gen)
    return open_at(name, path, lambda: layout_text, f"scripts/disks-layouts/{name}.xml on image server {server}"), laid
