"""An image as debootstrap leaves it (content in /run and /tmp, a lost+found, SystemImager's
excluded files) is still written in one pass (mke2fs -d), with the exclusions masked in a
private mount namespace: none of it reaches the VM, the image is untouched, no mount leaks."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import need_tools

from .harness import debugfs_cat, debugfs_ls, host_state, make_env, manifest

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "2G", "--swap", "0", "--dhcp", "--full-copy"]
PLANTED = {"run/lock/stale.pid": "4242\n", "run/systemd/seed": "x\n", "tmp/debootstrap.log": "log\n",
           "lost+found/#1234": "orphan\n", "var/lib/nfs/rpc_pipefs/gssd": "x\n", "etc/system-id": "golden\n",
           "var/tmp/kept": "kept: /var/tmp is not excluded\n"}


@pytest.fixture
def raw_image(tmp_path, debian12_image):
    """A hard-link copy of the test image with debootstrap-like leftovers planted (new files only)."""
    need_tools("cp", "mkfs.ext4", "debugfs", "unshare")
    images = tmp_path / "images"
    images.mkdir()
    img = images / "raw"
    subprocess.run(["cp", "-al", debian12_image, str(img)], check=True)
    for rel, text in PLANTED.items():
        os.makedirs(img / os.path.dirname(rel), exist_ok=True)
        (img / rel).write_text(text)
    return str(img)


def test_a_raw_image_is_one_pass_and_leaves_its_exclusions_out(tmp_path, raw_image):
    env = make_env(tmp_path / "e", os.path.dirname(raw_image))
    os.makedirs(f"{env.base}/store")
    before, state = manifest(raw_image), host_state(env.base, ("raw01",))
    run_mode = os.lstat(f"{raw_image}/run").st_mode
    cp = env.mk("raw", "--hostname", "raw01", *OPTS, "--dir", f"{env.base}/store", "--output", env.output, check=True)
    assert "Installation method: copy (mke2fs -d)" in cp.stdout and "rsync" not in cp.stdout
    disk = f"{env.base}/store/domains/raw01/disk.img"
    assert subprocess.run(["e2fsck", "-fn", disk], capture_output=True).returncode == 0
    for rel in PLANTED:
        if rel.startswith("var/tmp"):
            assert debugfs_cat(disk, f"/{rel}") == PLANTED[rel]
        else:
            assert debugfs_cat(disk, f"/{rel}") is None, f"/{rel} was copied"
    names = [line.split()[-1] for line in debugfs_ls(disk, "/run") if line.split()]
    assert set(names) <= {".", ".."}, f"/run is not empty in the VM: {names}"
    st = subprocess.run(["debugfs", "-R", "stat /run", disk], capture_output=True, text=True).stdout
    assert f"Mode:  0{run_mode & 0o7777:o}" in st, f"the mask changed /run's mode:\n{st[:300]}"
    assert debugfs_cat(disk, "/etc/hostname") == "raw01\n"
    assert manifest(raw_image) == before, "the image was modified"
    assert host_state(env.base, ("raw01",)) == state, "a mask leaked into the host"
    env.run("rmxenvm", "--yes", "raw01", check=True)
