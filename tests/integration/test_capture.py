"""si_getxenimage on real loop devices: image -> si_mkxenvm -> a change made in the VM ->
si_getxenimage --keep-xen -> the captured image equals the original plus the change, minus the
identity, entry by entry (rsync -n -a -c -i both ways, an allow-list, nothing else); and each
way a capture can fail: one FATAL, no staging dir, mount, loop device or lock left, the VM untouched."""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
import sys
import time

import pytest

from si_xen.image.metadata import parse_layout

from .harness import REPO, host_state, loop_fs, make_env, manifest, mounted, record, tiny_image, write
from .test_update import OPTS

pytestmark = pytest.mark.integration
LAYOUT = """<config>
  <fsinfo line="10" real_dev="/dev/sda1" mp="/" fs="ext4" options="defaults" />
  <fsinfo line="20" real_dev="/dev/sda2" mp="/var" fs="ext4" options="defaults" />
</config>
"""
# The VM's identity (removed) and what si_mkxenvm never copies (populate.EXCLUDES: not in the VM).
IDENTITY = ("etc/ssh/ssh_host_*", "etc/machine-id", "var/lib/dbus/machine-id", "etc/hostname")
NEVER_COPIED = ("proc/*", "sys/*", "run/*", "tmp/*", "lost+found")
METADATA = ("etc/systemimager/IMAGE_RETRIEVAL_TIME", "etc/systemimager/IMAGE_RETRIEVED_FROM",
            "etc/systemimager/disks-layout.xml", "etc/systemimager/autoinstallscript.conf")


def made(tmp_path, storage: str, layout: bool = False):
    """VM u1 of the tiny image (with --layout image: / and /var on disks of their own)."""
    images = tmp_path / "images"
    image = tiny_image(images)
    write(image, "/var/lib/app/small", "x\n")
    write(image, "/usr/share/doc/app/README", "docs\n")
    write(image, "/usr/share/doc/app/GONE", "removed in the VM\n")
    os.symlink("README", os.path.join(image, "usr/share/doc/app/LINK"))
    os.link(os.path.join(image, "usr/share/doc/app/README"), os.path.join(image, "usr/share/doc/app/HARD"))
    if layout:
        write(image, "/etc/systemimager/autoinstallscript.conf", LAYOUT)
    env = make_env(tmp_path / "e", str(images))
    env.mk("tiny", "--hostname", "u1", *OPTS, *(["--layout", "image"] if layout else []), "--dir", storage,
           "--output", env.output, check=True)
    return env, image, f"{storage}/domains/u1"


def changed(tmp_path, vmdir: str, layout: bool) -> set[str]:
    """The change made in the VM (mounted): one file edited, one added, one removed."""
    with mounted(f"{vmdir}/disk.img", tmp_path / "m") as root:
        write(root, "/etc/motd", "edited in the VM\n")
        write(root, "/srv/data/new", "new\n")
        write(root, "/etc/machine-id", "0123456789abcdef0123456789abcdef\n")  # identity: emptied in the capture
        os.unlink(os.path.join(root, "usr/share/doc/app/GONE"))
    out = {"etc/motd", "srv/", "srv/data/", "srv/data/new", "usr/share/doc/app/GONE"}
    if layout:
        with mounted(f"{vmdir}/var.img", tmp_path / "v") as var:
            write(var, "/lib/app/added", "on /var\n")
        out.add("var/lib/app/added")
    return out


def differences(a: str, b: str) -> dict[str, str]:
    """path -> rsync's itemized change, from a to b and b to a (a path only in one side shows so)."""
    out = {}
    for src, dst in ((a, b), (b, a)):
        cp = subprocess.run(["rsync", "-n", "-a", "-c", "-i", "-H", "--numeric-ids", "--delete", f"{src}/", f"{dst}/"],
                            capture_output=True, text=True, check=True)
        for line in cp.stdout.splitlines():
            item, path = line.split(None, 1)
            path = path.split(" => ")[0].split(" -> ")[0]
            out.setdefault(path.rstrip("/"), item)
    return out


def unexplained(diff: dict[str, str], allowed: set[str]) -> dict[str, str]:
    """The differences the allow-list does not name; a directory whose only change is its time
    (its content changed) counts if an allowed path lies in it."""
    pats = {p.rstrip("/") for p in allowed}
    left = {}
    for path, item in diff.items():
        if any(fnmatch.fnmatchcase(path, p) for p in pats):
            continue
        if item[1] == "d" and set(item[2:]) <= {".", "t"} and (path == "." or any(p.startswith(path + "/") for p in pats)):
            continue
        left[path] = item
    return left


def owned_paths(env) -> set[str]:
    rec = record(env, "u1")
    return {p.lstrip("/") for paths in rec["owned"].values() for p in paths}


def capture(env, *args: str, **kw) -> subprocess.CompletedProcess:
    return env.run("getxenimage", *args, **kw)


def fatal(cp) -> str:
    lines = [x for x in cp.stderr.splitlines() if x.startswith("FATAL:")]
    assert cp.returncode != 0 and len(lines) == 1 and "Traceback" not in cp.stderr, cp.stderr
    return lines[0]


@pytest.mark.parametrize("where,layout", [("xfs", False), ("ext4", False), ("ext4", True)],
                         ids=["dir-xfs", "dir-ext4", "layout-image"])
def test_round_trip_keep_xen(where, layout, request, tmp_path):
    storage = request.getfixturevalue("xfs_dir") if where == "xfs" else str(tmp_path / "vms")
    before = host_state(str(tmp_path), ("u1",))
    env, image, vmdir = made(tmp_path, storage, layout)
    change = changed(tmp_path, vmdir, layout)
    disks = {n: os.stat(f"{vmdir}/{n}").st_mtime_ns for n in os.listdir(vmdir)}
    cp = capture(env, "u1", "back", "--keep-xen", check=True)
    assert "Captured u1 into image back" in cp.stdout, cp.stdout
    got = os.path.join(os.path.dirname(image), "back")
    diff = differences(image, got)
    allowed = change | set(IDENTITY) | set(NEVER_COPIED) | set(METADATA) | owned_paths(env)
    assert unexplained(diff, allowed) == {}
    assert "etc/motd" in diff and "srv/data/new" in diff, "the change is captured (the comparison sees it)"
    # the identity is gone; the copy kept links, hard links and owners
    assert not [n for n in os.listdir(f"{got}/etc/ssh") if n.startswith("ssh_host_")]
    assert os.path.getsize(f"{got}/etc/machine-id") == 0
    assert os.readlink(f"{got}/usr/share/doc/app/LINK") == "README"
    assert os.stat(f"{got}/usr/share/doc/app/HARD").st_ino == os.stat(f"{got}/usr/share/doc/app/README").st_ino
    # SystemImager's metadata: the layout parses back to the VM's filesystems, the stub is exact
    rec = record(env, "u1")
    with open(f"{got}/etc/systemimager/{'autoinstallscript.conf' if layout else 'disks-layout.xml'}") as f:
        fs = parse_layout(f.read(), "disks-layout.xml")
    assert sorted((e.mountpoint, e.fs) for e in fs) == sorted(
        (d["mountpoint"] or "swap", d["fs"]) for d in rec["disks"])
    with open(f"{env.confdir}/rsync_stubs/40back") as f:
        assert f.read() == f"[back]\n\tpath={got}\n\n"
    with open(f"{got}/etc/systemimager/IMAGE_RETRIEVED_FROM") as f:
        assert f.read() == "u1\n"
    assert not [n for n in os.listdir(os.path.dirname(got)) if ".si-xen-" in n]
    assert {n: os.stat(f"{vmdir}/{n}").st_mtime_ns for n in os.listdir(vmdir)} == disks, "the VM only read"
    # and the captured image makes a VM again
    env.mk("back", "--hostname", "u2", *OPTS, "--dir", storage, "--output", env.output, check=True)
    for vm in ("u1", "u2"):
        env.run("rmxenvm", vm, "--yes", check=True)
    assert host_state(str(tmp_path), ("u1", "u2")) == before
