"""Copy-on-write clones on a real XFS filesystem (reflinks), and the ext4 fallback."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.unit import fakeimage

from .harness import debugfs_cat, host_state, make_env

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "2G", "--swap", "128M", "--dhcp"]


def used_mib(path: str) -> float:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**20


def test_second_vm_is_a_clone_costing_almost_nothing(debian12_image, xfs_dir, tmp_path):
    env = make_env(tmp_path / "e", os.path.dirname(debian12_image))
    before = host_state(str(tmp_path), ("c1", "c2"))
    first = env.mk("debian12", "--hostname", "c1", *OPTS, "--dir", xfs_dir, "--output", env.output, check=True)
    assert "Building base disks" in first.stdout and "Cloning disk image" in first.stdout
    used = used_mib(xfs_dir)
    second = env.mk("debian12", "--hostname", "c2", *OPTS, "--dir", xfs_dir, "--output", env.output, check=True)
    assert "Building base" not in second.stdout and "Cloning disk image" in second.stdout
    image_mib = 640
    assert used_mib(xfs_dir) - used < 0.05 * image_mib, "a clone must add under 5% of the image"
    bases = [n for n in os.listdir(f"{xfs_dir}/bases") if n.endswith(".img")]
    assert len(bases) == 1
    base = f"{xfs_dir}/bases/{bases[0]}"
    for h in ("c1", "c2"):
        disk = f"{xfs_dir}/domains/{h}/disk.img"
        assert subprocess.run(["e2fsck", "-fn", disk], capture_output=True).returncode == 0
        assert debugfs_cat(disk, "/etc/hostname") == f"{h}\n"
    # the base is the image's plain copy: no VM's identity leaks into it
    assert debugfs_cat(base, "/etc/hostname") == "golden01\n"
    assert debugfs_cat(f"{xfs_dir}/domains/c1/disk.img", "/etc/ssh/ssh_host_ed25519_key.pub") != debugfs_cat(
        f"{xfs_dir}/domains/c2/disk.img", "/etc/ssh/ssh_host_ed25519_key.pub")
    ls = env.run("lsxenvm", check=True).stdout
    assert f"clone of {base}" in ls
    env.run("rmxenvm", "c1", "--yes", "--prune-bases", check=True)
    assert os.path.exists(base), "c2 still uses the base"
    env.run("rmxenvm", "c2", "--yes", "--prune-bases", check=True)
    assert not any(n.endswith(".img") for n in os.listdir(f"{xfs_dir}/bases"))
    assert host_state(str(tmp_path), ("c1", "c2")) == before


def test_changed_image_gets_a_new_base(xfs_dir, tmp_path, as_root):
    images = tmp_path / "images"
    root = fakeimage.make(images / "tiny", unpacked_mib=4)
    env = make_env(tmp_path / "e", str(images))
    before = host_state(str(tmp_path), ("t1", "t2", "t3", "t4"))
    opts = ["--memory", "512M", "--size", "512M", "--noswap", "--dhcp", "--dir", xfs_dir, "--output", env.output]
    env.mk("tiny", "--hostname", "t1", *opts, check=True)
    with open(os.path.join(root, "etc/motd"), "w") as f:
        f.write("new release\n")
    # t2 is planned from the image's last walk and cloned from t1's base while the new walk
    # runs; the walk finds the change, so that VM is undone and t2 made from a new base
    out = env.mk("tiny", "--hostname", "t2", *opts, check=True).stdout
    assert "Not kept: the image changed since its last walk; planning again" in out
    assert "Building base disks" in out
    assert len([n for n in os.listdir(f"{xfs_dir}/bases") if n.endswith(".img")]) == 2
    assert debugfs_cat(f"{xfs_dir}/domains/t2/disk.img", "/etc/motd") == "new release\n"
    assert debugfs_cat(f"{xfs_dir}/domains/t1/disk.img", "/etc/motd") is None
    out = env.mk("tiny", "--hostname", "t3", *opts, check=True).stdout  # the new walk holds now
    assert "Not kept" not in out and "Building base" not in out
    assert debugfs_cat(f"{xfs_dir}/domains/t3/disk.img", "/etc/motd") == "new release\n"
    # a base removed behind the last walk's back is built again, not assumed
    env.run("rmxenvm", "t1", "t2", "t3", "--yes", "--prune-bases", check=True)
    out = env.mk("tiny", "--hostname", "t4", *opts, check=True).stdout
    assert "Building base disks" in out and "Not kept" not in out
    assert set(os.listdir(f"{xfs_dir}/domains")) == {"t4"}
    assert host_state(str(tmp_path), ("t1", "t2", "t3", "t4")) == before


def test_full_copy_and_ext4_fallback_say_so(debian12_image, tmp_path):
    env = make_env(tmp_path / "e", os.path.dirname(debian12_image))
    out = env.mk("debian12", "--hostname", "f1", *OPTS, "--dir", env.dir, "--output", env.output, "--dry-run",
                 check=True).stdout
    fs = subprocess.run(["stat", "-f", "-c", "%T", env.dir], capture_output=True, text=True).stdout.strip()
    if fs in ("xfs", "btrfs"):
        pytest.skip(f"{env.dir} is on {fs}")
    assert "cannot reflink" in out
    out = env.mk("debian12", "--hostname", "f1", *OPTS, "--dir", env.dir, "--output", env.output, "--full-copy",
                 "--dry-run", check=True).stdout
    assert "full copy (--full-copy)" in out
    shutil.rmtree(env.dir)


def test_batch_of_clones_with_consecutive_addresses(debian12_image, xfs_dir, tmp_path):
    env = make_env(tmp_path / "e", os.path.dirname(debian12_image))
    hosts = ("b1", "b2", "b3", "b4", "b5", "b6")
    before = host_state(str(tmp_path), hosts)
    out = env.mk("debian12", "--hostname", "b[1-4]", "--memory", "512M", "--size", "2G", "--noswap",
                 "--ip", "10.0.0.10/24", "--gateway", "10.0.0.1", "--dir", xfs_dir, "--output", env.output,
                 check=True).stdout
    assert "4 of 4 VMs made" in out
    for i in range(1, 5):
        ifaces = debugfs_cat(f"{xfs_dir}/domains/b{i}/disk.img", "/etc/network/interfaces")
        assert f"address 10.0.0.{9 + i}" in ifaces
        assert debugfs_cat(f"{xfs_dir}/domains/b{i}/disk.img", "/etc/hostname") == f"b{i}\n"
    macs = {open(f"{env.output}/b{i}.cfg").read().split("mac=")[1][:17] for i in range(1, 5)}
    assert len(macs) == 4
    # a batch that would clash with an existing VM is refused before anything is made
    cp = env.mk("debian12", "--hostname", "b[4-6]", "--memory", "512M", "--dhcp", "--dir", xfs_dir,
                "--output", env.output)
    assert cp.returncode == 1 and "b4" in cp.stderr and not os.path.exists(f"{xfs_dir}/domains/b5")
    env.run("rmxenvm", "b1", "b2", "b3", "b4", "--yes", "--prune-bases", check=True)
    assert host_state(str(tmp_path), hosts) == before
