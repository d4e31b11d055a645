"""si_updatexenvm checks the room an update needs before it changes anything: on each of the VM's
filesystems (a /var of its own fills apart from /), and on the host filesystem holding its sparse
disk images (the new blocks come from there)."""

from __future__ import annotations

import os

import pytest

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


def test_a_full_var_of_its_own_is_refused_before_any_change(tmp_path):
    images = tmp_path / "images"
    image = tiny_image(images)
    write(image, "/etc/systemimager/autoinstallscript.conf", LAYOUT)
    write(image, "/var/lib/app/small", "x\n")
    env = make_env(tmp_path / "e", str(images))
    env.mk("tiny", "--hostname", "u1", *OPTS, "--layout", "image", "--dir", str(tmp_path / "vms"), "--output", env.output,
           check=True)
    var = f"{tmp_path}/vms/domains/u1/var.img"
    assert os.path.exists(var), os.listdir(f"{tmp_path}/vms/domains/u1")
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
