"""A full copy of an image that changes while it is copied (an si_getimage into the live image):
the VM is made again from the image as it now is, or refused; never a VM of neither image.
The same for the copy into the base disks that a first clone builds (on XFS): never a base of
neither image, published under the old image's name for every later clone.

A copy of the Debian 12 test image, with 1 GiB more data so the copy is slow enough to be hit;
a thread waits for the deploy's journal to reach the copy, then 0.5 s later deletes a directory
and adds a 50 MB file, as the ``--full-copy`` reproduction of issue 26 did.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from si_xen.image import survey
from tests.conftest import need_tools

from .harness import debugfs_cat, host_state, make_env, tree_files

pytestmark = pytest.mark.integration
NAME = "chg01"
OPTS = ["--memory", "512M", "--size", "4G", "--swap", "0", "--dhcp"]
GONE, ADDED = "/usr/share/doc", "/opt/added.bin"


def debugfs_stat(disk: str, path: str) -> str:
    cp = subprocess.run(["debugfs", "-R", f"stat {path}", disk], capture_output=True, text=True)
    return "" if "File not found" in cp.stderr else cp.stdout


@pytest.fixture
def changing(tmp_path, debian12_image, as_root):
    need_tools("rsync", "mkfs.ext4", "debugfs", "losetup", "ssh-keygen", "cp")
    images = tmp_path / "images"
    images.mkdir()
    root = str(images / "debian12")
    subprocess.run(["cp", "-a", debian12_image, root], check=True)
    with open(f"{root}/srv/big.bin", "wb") as f:  # not zeros: mke2fs -d must write every block
        chunk = bytes(range(256)) * 4096
        for _ in range(1024):
            f.write(chunk)
    yield root, make_env(tmp_path / "e", str(images))


def change_during_copy(root: str, journal: str, done: list) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with open(journal) as f:
                steps = [json.loads(line).get("step") for line in f if line.strip()]
        except (OSError, ValueError):
            steps = []
        if {"filesystems", "copy", "base-filesystems", "base-copy"} & set(steps):  # mke2fs -d or rsync: copying
            time.sleep(0.5)
            shutil.rmtree(root + GONE)
            with open(root + ADDED, "wb") as f:
                f.write(os.urandom(50 * 2**20))
            done.append(time.monotonic())
            return
        time.sleep(0.02)


@pytest.mark.parametrize("how", ["--full-copy", "first clone"])
def test_a_copy_of_a_changing_image_is_the_new_image_or_refused(changing, how, request):
    root, env = changing
    store = request.getfixturevalue("xfs_dir") if how == "first clone" else env.dir
    before = host_state(env.base, (NAME,))
    done: list = []
    t = threading.Thread(target=change_during_copy, args=(root, f"{env.state}/vms/{NAME}.journal", done))
    t.start()
    opts = [*OPTS, "--dir", store, "--output", env.output] + (["--full-copy"] if how == "--full-copy" else [])
    cp = env.mk("debian12", "--hostname", NAME, *opts)
    t.join()
    assert done, "the image was not changed during the deploy"
    assert "Traceback" not in cp.stderr
    if cp.returncode:  # refused: one FATAL, nothing left
        assert cp.stderr.count("FATAL:") == 1 and "changed under each of 3 deploys" in cp.stderr, cp.stderr
        assert tree_files(store) == [] and not os.path.exists(f"{env.output}/{NAME}.cfg")
        assert not os.path.exists(f"{env.state}/vms/{NAME}.journal")
    else:
        disk = f"{store}/domains/{NAME}/disk.img"
        assert subprocess.run(["e2fsck", "-fn", disk], capture_output=True).returncode == 0
        assert "Size: 52428800" in debugfs_stat(disk, ADDED), "the file added to the image is missing"
        assert debugfs_stat(disk, GONE) == "", "the directory deleted from the image is still there"
        assert debugfs_cat(disk, "/etc/debian_version") is not None
        rec = json.loads(env.run("lsxenvm", "--json", check=True).stdout.splitlines()[0])
        fingerprint = survey.survey(root).fingerprint
        assert rec["image_fingerprint"] == fingerprint  # of what was copied
        if how == "first clone":  # only a base of the new image was published
            assert [n for n in os.listdir(f"{store}/bases") if n.endswith(".img")] == [
                f"debian12-{fingerprint}-disk-ext4-4096M.img"]
        assert "Not kept: the image changed while it was copied; planning again" in cp.stdout, cp.stdout
        env.run("rmxenvm", NAME, "--yes", "--prune-bases", check=True)
    assert host_state(env.base, (NAME,)) == before
    assert os.listdir(env.lock) == []
