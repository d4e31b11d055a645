"""V2P on real disks (issue 29 items 2 and 5): an image with a golden client's Xen-unready files
(gettys on tty1-6, hwclock, sda in fstab, a static eth0, persistent-net rules, a MAC-bound .link,
host keys, machine-id) -> si_mkxenvm (ext4 filled in one pass, XFS filled by rsync, --layout image
with /var on a disk of its own) -> a change made in the VM (its disks mounted) -> its tree copied
as a capture copies it -> reverse + strip_identity -> compared with the image by rsync -n -a -c -i
both ways: nothing differs but the change and identity. With any fixup's owned paths left out of
the record (and its golden copies out of the aside MANIFEST), the comparison fails.

(Written against capture/reverse.py's functions; the lead switches it to si_getxenimage at merge.)
"""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import ExitStack
from dataclasses import replace

import pytest

from si_xen import journal, populate
from si_xen.capture.identity import strip_identity
from si_xen.capture.reverse import reverse
from si_xen.fixups import FIXUPS
from si_xen.fixups.aside import MANIFEST
from tests.conftest import need_tools
from tests.unit.fixups.trees import MERGED, TREES, L

from .harness import host_state, make_env, mounted, tiny_image, write

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "512M", "--noswap", "--ip", "192.0.2.10", "--netmask", "255.255.255.0",
        "--gateway", "192.0.2.1", "--nameserver", "192.0.2.1"]
LAYOUT = """<config>
  <fsinfo line="10" real_dev="/dev/sda1" mp="/" fs="ext4" options="defaults" />
  <fsinfo line="20" real_dev="/dev/sda2" mp="/var" fs="ext4" options="defaults" />
</config>
"""
GOLDEN = {p: v for p, v in TREES["debian12"].items()
          if p not in MERGED and p not in ("etc/os-release", "usr/lib/os-release")}
GOLDEN["etc/systemd/network/10-golden.link"] = "[Match]\nMACAddress=00:1a:64:aa:bb:cc\n[Link]\nName=eth0\n"
GOLDEN["etc/udev/rules.d/70-persistent-net.rules"] = 'SUBSYSTEM=="net", ATTR{address}=="00:1a:64:aa:bb:cc", NAME="eth0"\n'
GOLDEN["usr/bin/cloud-init"] = "#!/usr/bin/python3\n"  # its files only (never run): the cloudinit fixup's seed
GOLDEN["etc/cloud/cloud.cfg"] = "users: [default]\n"
EXCLUDES = [f"--exclude={x}" for x in populate.EXCLUDES]  # what no VM gets, so no capture brings


def golden_image(images) -> str:
    image = tiny_image(images)
    for path, body in sorted(GOLDEN.items(), key=lambda kv: not isinstance(kv[1], L)):
        if isinstance(body, L):
            os.makedirs(os.path.dirname(os.path.join(image, path)), exist_ok=True)
            os.symlink(body.target, os.path.join(image, path))
        else:
            write(image, path, body)
    return image


def itemized(src: str, dst: str) -> set[str]:
    """What rsync would change in ``dst`` to make it ``src`` (paths, "./" the top)."""
    cp = subprocess.run(["rsync", "-n", "-a", "-c", "-i", "--numeric-ids", "--delete", *EXCLUDES,
                         src.rstrip("/") + "/", dst.rstrip("/") + "/"], capture_output=True, text=True, check=True)
    out = set()
    for line in cp.stdout.splitlines():
        path = line.split(" ", 1)[1] if line.startswith("*deleting") else line[12:]
        if line[1:2] == "L":
            path = path.split(" -> ", 1)[0]  # a symlink's line names its target too
        out.add(path.strip().rstrip("/") or ".")
    return out


def differences(image: str, tree: str) -> set[str]:
    return itemized(image, tree) | itemized(tree, image)


@pytest.fixture(scope="module")
def tools():
    need_tools("rsync", "mkfs.ext4", "mkfs.xfs", "losetup", "mount")


def made(tmp_path, storage: str, *extra: str):
    """VM v1 of the golden image, changed in its own life; returns the env, image, record and the
    tree copied from its disks (as a capture copies it: rsync -aHAXS, the deploy's excludes)."""
    images = tmp_path / "images"
    image = golden_image(images)
    if "--layout" in extra:
        write(image, "/etc/systemimager/autoinstallscript.conf", LAYOUT)
    env = make_env(tmp_path / "e", str(images))
    env.mk("tiny", "--hostname", "v1", *OPTS, *extra, "--dir", storage, "--output", env.output, check=True)
    rec = journal.load(env.state, "v1").record
    return env, image, rec, copied(rec, tmp_path)


def copied(rec, tmp_path, motd: bool = True) -> str:
    """The VM's disks mounted as its fstab has them, the change made, the tree copied."""
    tree = str(tmp_path / "copy")
    with ExitStack() as stack:
        root = tmp_path / "m"
        for d in sorted(rec.disks, key=lambda d: len(d.mountpoint)):
            if d.mountpoint:
                stack.enter_context(mounted(d.target, root / d.mountpoint.lstrip("/")))
        write(root, "/home/u/notes", "mine\n")  # the change made in the VM
        if motd:
            write(root, "/etc/motd", "edited in the VM\n")
        subprocess.run(["rsync", "-aHAXS", "--numeric-ids", *EXCLUDES, f"{root}/", f"{tree}/"], check=True)
    return tree


CHANGE = {"home", "home/u", "home/u/notes", "etc/motd", "."}  # "." : home made at the top


def identity_of(lines: list[str]) -> set[str]:
    """The paths strip_identity reports, and the directories they were in (their mtime)."""
    paths = {ln.split(" ", 1)[1].split(" ")[0].lstrip("/") for ln in lines}
    return paths | {os.path.dirname(p) for p in paths}


@pytest.mark.parametrize("how", ["ext4", "xfs", "layout-image", "pygrub"])
def test_a_vm_captured_for_physical_machines_is_its_image_plus_the_change(tools, xfs_dir, tmp_path, how):
    storage = xfs_dir if how == "xfs" else str(tmp_path / "vms")
    extra = {"ext4": (), "xfs": ("--fs", "xfs", "--full-copy"), "layout-image": ("--layout", "image"),
             "pygrub": ("--boot", "pygrub")}[how]
    before = host_state(str(tmp_path), ("v1",))
    env, image, rec, tree = made(tmp_path, storage, *extra)
    assert len(rec.disks) == (2 if how == "layout-image" else 1)
    assert {"console", "hwclock", "network", "fstab", "macs", "identity", "hostname", "kernel"} <= set(rec.owned)
    assert ("boot" in rec.owned) == (how == "pygrub")
    raw = differences(image, tree)
    assert {"etc/fstab", "etc/hosts", "etc/network/interfaces", "var/lib/si-xen"} <= raw  # the VM's Xen-isms
    said = []
    notes = reverse(tree, rec, f"{env.state}/images", said.append)
    assert notes == [] and said and "0 not reversed" in said[0]
    ident = identity_of(strip_identity(tree))
    assert {"etc/machine-id", "var/lib/systemd/random-seed"} <= ident
    assert differences(image, tree) - CHANGE - ident == set()
    with open(os.path.join(tree, "etc/fstab")) as f:
        assert "/dev/sda5" in f.read() and "xvda" not in open(os.path.join(tree, "etc/fstab")).read()
    assert not os.path.lexists(os.path.join(tree, "var/lib/si-xen"))
    assert os.path.getsize(os.path.join(tree, "etc/machine-id")) == 0
    env.run("rmxenvm", "v1", "--yes", check=True)
    assert host_state(str(tmp_path), ("v1",)) == before


@pytest.fixture(scope="module")
def one_vm(tmp_path_factory, tools):
    tmp_path = tmp_path_factory.mktemp("v2p")
    env, image, rec, tree = made(tmp_path, str(tmp_path / "vms"), "--boot", "pygrub")  # grub.cfg: "boot"'s
    yield env, image, rec, tree
    env.run("rmxenvm", "v1", "--yes", check=True)


@pytest.mark.parametrize("fixup", [f.name for f in FIXUPS] + ["boot"])
def test_the_comparison_fails_if_a_fixups_reversal_is_removed(one_vm, tmp_path, fixup):
    env, image, rec, pristine = one_vm
    tree = str(tmp_path / "copy")
    subprocess.run(["cp", "-a", pristine, tree], check=True)
    kept = os.path.join(tree, MANIFEST)
    with open(kept) as f:
        lines = [ln for ln in f if ln.count("\t") < 2 or ln.split("\t")[1] not in rec.owned[fixup]]
    with open(kept, "w") as f:
        f.writelines(lines)
    cut = replace(rec, owned={k: v for k, v in rec.owned.items() if k != fixup})
    reverse(tree, cut, f"{env.state}/images", lambda _: None)
    ident = identity_of(strip_identity(tree))
    left = differences(image, tree) - CHANGE - ident
    assert left, f"fixup {fixup}'s changes were undone without its record"
    mine = set(rec.owned[fixup]) | {os.path.dirname(p) for p in rec.owned[fixup]}
    assert {"/" + p for p in left} <= mine, "only what that fixup wrote is left"


def test_strip_identity_on_the_copy_leaves_no_key(one_vm, tmp_path):
    _, _, _, pristine = one_vm
    tree = str(tmp_path / "copy")
    shutil.copytree(pristine, tree, symlinks=True)
    assert [n for n in os.listdir(os.path.join(tree, "etc/ssh")) if n.startswith("ssh_host_")]
    strip_identity(tree)
    assert not [n for n in os.listdir(os.path.join(tree, "etc/ssh")) if n.startswith("ssh_host_")]


def test_a_vm_updated_is_captured_as_the_generation_it_was_updated_to(tools, tmp_path):
    """The record's generation moves with an update: the capture is the image it was updated to, the
    golden network file changed there included (the update leaves the VM's own; reverse takes the
    image's)."""
    env, image, rec, _ = made(tmp_path / "first", str(tmp_path / "vms"))
    write(image, "/etc/new.conf", "new\n")
    write(image, "/etc/network/interfaces", GOLDEN["etc/network/interfaces"] + "# release 2\n")
    os.unlink(os.path.join(image, "etc/motd"))
    assert "fetched 1, deleted 1" in env.run("updatexenvm", "v1", check=True).stdout
    new = journal.load(env.state, "v1").record
    assert new.image_fingerprint != rec.image_fingerprint
    tree = copied(new, tmp_path, motd=False)
    assert reverse(tree, new, f"{env.state}/images", lambda _: None) == []
    ident = identity_of(strip_identity(tree))
    assert differences(image, tree) - {"home", "home/u", "home/u/notes", "."} - ident == set()
    with open(os.path.join(tree, "etc/network/interfaces")) as f:
        assert f.read().endswith("# release 2\n")
    env.run("rmxenvm", "v1", "--yes", check=True)


def test_the_debian12_test_image_round_trips(tools, debian12_image, tmp_path):
    """The real thing: debootstrap's Debian 12 (systemd, ifupdown, its own units and links) made
    into a VM in one pass and captured back: the image, plus the change, minus identity."""
    images = os.path.dirname(debian12_image)
    env = make_env(tmp_path / "e", images)
    env.mk("debian12", "--hostname", "v1", *OPTS, "--size", "1G", "--dir", str(tmp_path / "vms"), "--output", env.output,
           "--boot", "pygrub", check=True)  # grub.cfg and a Xen-sized NAME.xen initramfs written in the guest
    rec = journal.load(env.state, "v1").record
    tree = copied(rec, tmp_path)
    xen = [p for p in rec.owned["boot"] if p.endswith(".xen")]
    assert rec.initramfs == "slim" and len(xen) == 1 and os.path.isfile(tree + xen[0])
    assert {"etc/fstab", "etc/network/interfaces", "etc/hosts", "var/lib/si-xen"} <= differences(debian12_image, tree)
    said = []
    assert reverse(tree, rec, f"{env.state}/images", said.append) == []
    assert said[0].endswith("removed; 0 not reversed"), said
    ident = identity_of(strip_identity(tree))
    assert differences(debian12_image, tree) - CHANGE - ident == set()
    env.run("rmxenvm", "v1", "--yes", check=True)
