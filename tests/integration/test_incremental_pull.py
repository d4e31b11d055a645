"""The incremental pull (image/increment.py) against a real rsync daemon: every kind of change
a golden image gets on the server arrives, the new generation equals the server's tree, and
the previous generation (which deploys may still read) is left exactly as it was."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest

from si_xen.image import cache, remote
from tests.conftest import need_tools

from .test_image_server import Daemon

pytestmark = pytest.mark.integration


def write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def manifest(root: str) -> dict[str, tuple]:
    """Every entry's type, mode, owner, size, mtime, inode, xattrs and content: what a deploy reads."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            st = os.lstat(p)
            xattrs = tuple(sorted((k, os.getxattr(p, k, follow_symlinks=False))
                                  for k in os.listxattr(p, follow_symlinks=False)))
            body = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns,
                                             st.st_ino, xattrs, body)
    return out


def differs(server: Daemon, gen: str) -> list[str]:
    """What rsync (with checksums) would still change in ``gen`` to make it the server's image."""
    out = subprocess.run(["rsync", "-n", "-i", "-c", *cache.pull_flags(), f"rsync://{server.address}/debian12/",
                          gen + "/"], capture_output=True, text=True, check=True).stdout
    return [ln for ln in out.splitlines() if cache._ITEMS.match(ln)]


@pytest.fixture
def server(tmp_path, as_root):
    need_tools("rsync", "cp")
    img = f"{tmp_path}/srv/images/debian12"
    for rel in ("etc/motd", "etc/app/conf", "etc/owned", "etc/tagged", "usr/bin/tool", "var/old/a", "var/old/b",
                "etc/becomes-dir", "etc/name with space"):
        write(f"{img}/{rel}", f"{rel}\n")
    os.symlink("motd", f"{img}/etc/link")
    os.symlink("motd", f"{img}/etc/link-owned")
    os.link(f"{img}/usr/bin/tool", f"{img}/usr/bin/tool-alias")
    os.mkfifo(f"{img}/etc/fifo", 0o600)
    write(f"{img}/etc/systemimager/IMAGE_RETRIEVAL_TIME", "2026.12.01 10:00\n")
    d = Daemon(f"{tmp_path}/srv")
    d.start()
    try:
        yield d, img
    finally:
        d.stop()


def first_pull(d: Daemon, tmp_path) -> tuple[cache.Cached, str, dict]:
    """The cache after its first (full) pull: the cached image, its generation and its manifest."""
    c = cache.Cached(f"{tmp_path}/cache", f"{tmp_path}/lock", remote.Server("127.0.0.1", d.port), "debian12")
    with c.lock():
        first, _ = c.pull(None)
    return c, first, manifest(first)


def test_every_kind_of_change_arrives_and_the_previous_generation_is_untouched(server, tmp_path):
    d, img = server
    c, first, before = first_pull(d, tmp_path)

    write(f"{img}/etc/motd", "a new release of the golden image\n")  # content
    write(f"{img}/etc/app/new", "added\n")  # a new file in an old dir
    write(f"{img}/opt/new/deep/file", "a new tree\n")  # new dirs
    os.unlink(f"{img}/var/old/a")  # a deletion, and a whole tree gone
    os.unlink(f"{img}/var/old/b")
    os.rmdir(f"{img}/var/old")
    os.chmod(f"{img}/etc/app/conf", 0o600)  # attributes alone: mode, owner, xattr, a symlink's owner,
    os.chown(f"{img}/etc/owned", 1234, 1234)  # a fifo's mode, a hard-linked pair's mode
    os.setxattr(f"{img}/etc/tagged", "user.si-xen", b"tag")
    os.lchown(f"{img}/etc/link-owned", 4321, 4321)
    os.chmod(f"{img}/etc/fifo", 0o644)
    os.chmod(f"{img}/usr/bin/tool", 0o700)
    os.unlink(f"{img}/etc/link")  # a symlink's target
    os.symlink("app/conf", f"{img}/etc/link")
    os.unlink(f"{img}/etc/becomes-dir")  # a file that is now a directory
    write(f"{img}/etc/becomes-dir/inside", "x\n")
    os.link(f"{img}/etc/motd", f"{img}/etc/motd.hardlink")  # a new hard link
    # (a longer text: rsync's quick check compares size and whole-second mtimes)
    write(f"{img}/etc/systemimager/IMAGE_RETRIEVAL_TIME", "2026.12.02 10:00:30\n")

    with c.lock():
        second, st = c.pull("2026.12.02 10:00:30")
    assert second != first
    assert differs(d, second) == [], "the new generation is the server's image"
    assert manifest(first) == before, "the previous generation is read by deploys: never written"
    assert os.stat(f"{second}/usr/bin/tool").st_ino == os.stat(f"{second}/usr/bin/tool-alias").st_ino
    assert os.stat(f"{second}/etc/motd").st_ino == os.stat(f"{second}/etc/motd.hardlink").st_ino
    unchanged = "etc/name with space"
    assert os.stat(f"{second}/{unchanged}").st_ino == os.stat(f"{first}/{unchanged}").st_ino, "unchanged: shared"
    assert 0 < st["files"] < 10
    assert not [n for n in os.listdir(c.dir) if n.startswith(".")], "no staging or list left"


def test_a_name_rsync_escapes_falls_back_to_link_dest(server, tmp_path):
    d, img = server
    c, first, before = first_pull(d, tmp_path)
    write(f"{img}/etc/new\nline", "a name with a newline\n")
    os.chmod(f"{img}/etc/app/conf", 0o600)
    with c.lock():
        second, _ = c.pull(None)  # no retrieval time: rsync's own comparison finds the change
    assert differs(d, second) == [] and manifest(first) == before
    assert os.path.isfile(f"{second}/etc/new\nline")
