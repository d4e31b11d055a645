"""si_updatexenvm on VMs of more than one disk, and the host's disks: the room an update needs,
checked before it changes anything, on each of the VM's filesystems (a /var of its own fills
apart from /) and on the host filesystem holding its sparse disk images (the new blocks come from
there); an update killed between its disks' swaps, finished whole by the next one."""

from __future__ import annotations

import json
import os

import pytest

from si_xen.made import Swap

from .harness import debugfs_cat, host_state, loop_fs, make_env, tiny_image, write
from .test_update import OPTS, tree_of

pytestmark = pytest.mark.integration
LAYOUT = """<config>
  <fsinfo line="10" real_dev="/dev/sda1" mp="/" fs="ext4" options="defaults" />
  <fsinfo line="20" real_dev="/dev/sda2" mp="/var" fs="ext4" options="defaults" />
</config>
"""


def big(image: str, gpath: str, mib: int) -> None:
    os.makedirs(os.path.dirname(os.path.join(image, gpath.lstrip("/"))), exist_ok=True)
    with open(os.path.join(image, gpath.lstrip("/")), "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def refused(env, what: str) -> None:
    cp = env.run("updatexenvm", "u1")
    lines = [x for x in cp.stderr.splitlines() if x.startswith("FATAL:")]
    assert cp.returncode == 1 and len(lines) == 1, cp.stderr
    assert f"{what} needs" in lines[0] and "MiB more for this update" in lines[0], lines[0]
    assert "Traceback" not in cp.stderr


def two_disks(tmp_path, storage: str):
    """VM u1 of an image whose layout gives /var a disk of its own."""
    images = tmp_path / "images"
    image = tiny_image(images)
    write(image, "/etc/systemimager/autoinstallscript.conf", LAYOUT)
    write(image, "/var/lib/app/small", "x\n")
    env = make_env(tmp_path / "e", str(images))
    env.mk("tiny", "--hostname", "u1", *OPTS, "--layout", "image", "--dir", storage, "--output", env.output, check=True)
    var = f"{storage}/domains/u1/var.img"
    assert os.path.exists(var), os.listdir(f"{storage}/domains/u1")
    return env, image, var


def test_a_full_var_of_its_own_is_refused_before_any_change(tmp_path):
    env, image, var = two_disks(tmp_path, str(tmp_path / "vms"))
    before = host_state(str(tmp_path), ("u1",))
    trees = {d: tree_of(d, tmp_path / "ro") for d in (var, f"{tmp_path}/vms/domains/u1/disk.img")}
    write(image, "/etc/motd", "release 2\n")
    big(image, "/var/lib/app/big", 300)  # / (512M) has room for it; the VM's /var, sized for the image, has not
    refused(env, "u1's /var")
    assert {d: tree_of(d, tmp_path / "ro") for d in trees} == trees, "nothing changed, not even / (checked first)"
    assert "unfinished" not in env.run("lsxenvm", check=True).stdout
    assert host_state(str(tmp_path), ("u1",)) == before
    os.unlink(os.path.join(image, "var/lib/app/big"))
    env.run("updatexenvm", "u1", check=True)  # the image fits again: updated
    assert debugfs_cat(f"{tmp_path}/vms/domains/u1/disk.img", "/etc/motd") == "release 2\n"


def test_a_host_filesystem_without_room_for_the_new_blocks_is_refused(tmp_path, as_root):
    with loop_fs(tmp_path, "small", 200 << 20, ["mkfs.ext4", "-q", "-F"]) as host:
        images = tmp_path / "images"
        image = tiny_image(images)
        env = make_env(tmp_path / "e", str(images))
        env.mk("tiny", "--hostname", "u1", *OPTS, "--dir", str(host), "--output", env.output, check=True)
        disk = f"{host}/domains/u1/disk.img"
        tree = tree_of(disk, tmp_path / "ro")
        big(image, "/opt/big", 220)  # the VM's 512M / has room; the 200M host filesystem its sparse disk is on has not
        refused(env, f"{host}/domains/u1 (where u1's disk images are)")
        assert tree_of(disk, tmp_path / "ro") == tree
        env.run("rmxenvm", "u1", "--yes", check=True)


def test_killed_between_two_swaps_the_next_update_brings_both_disks(xfs_dir, tmp_path, monkeypatch):
    """The crash between the swaps is made as the killed run would have left it: killed as its swap
    step began, then the first disk's Swap journaled and done (made.Swap's own code), the second not."""
    env, image, var = two_disks(tmp_path, xfs_dir)
    disk = f"{xfs_dir}/domains/u1/disk.img"
    before_host = host_state(str(tmp_path), ("u1",))
    write(image, "/etc/motd", "release 2\n")
    write(image, "/var/lib/app/small", "y\n")
    monkeypatch.setenv("SI_XEN_KILL_AT", "swap")
    assert env.run("updatexenvm", "u1").returncode == -9
    monkeypatch.delenv("SI_XEN_KILL_AT")
    jpath = f"{env.state}/vms/u1.journal"
    copies = [json.loads(x)["made"]["path"] for x in open(jpath) if '"disk-file"' in x and ".upd-" in x]
    assert sorted(os.path.basename(c).split(".upd-")[0] for c in copies) == ["disk.img", "var.img"]
    first = next(c for c in copies if c.startswith(disk))
    sw = Swap(disk, first, f"{disk}.upd-old")
    with open(jpath, "a") as f:
        f.write(json.dumps({"made": sw.to_json()}) + "\n")
    sw.finish()
    assert debugfs_cat(disk, "/etc/motd") == "release 2\n" and debugfs_cat(var, "/lib/app/small") == "x\n"
    out = env.run("updatexenvm", "u1", check=True)
    assert "did not finish; finishing it" in out.stderr
    assert "Running hooks again: hwclock, console" in out.stdout, "two generations: every fixup runs again"
    assert debugfs_cat(disk, "/etc/motd") == "release 2\n" and debugfs_cat(var, "/lib/app/small") == "y\n"
    assert sorted(os.listdir(f"{xfs_dir}/domains/u1")) == ["disk.img", "initrd.img", "var.img", "vmlinuz"]
    env.run("rmxenvm", "u1", "--yes", check=True)
    assert host_state(str(tmp_path), ("u1",)) == before_host
