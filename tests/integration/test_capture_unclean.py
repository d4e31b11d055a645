"""si_getxenimage of filesystems whose journals hold changes (a VM destroyed, not shut down; a
foreign disk copied while its guest ran): read from a private copy where the journal is replayed,
or refused with one FATAL, never a stale tree; the VM's disk and the admin's file never written.
The guests' filesystems are XFS: a mount with norecovery (what a read-only mount must use on the
original) misses files written and synced before the crash, so these tests fail without replay."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from si_xen.storage.mount import unclean

from .harness import host_state, make_env, tiny_image, write
from .test_capture import capture, fatal
from .test_drift import sha256 as sha
from .test_update import OPTS

pytestmark = pytest.mark.integration
LATE = 40  # files written in the guest just before it "crashed"


def crashed(disk: str, where) -> None:
    """``disk`` left as a guest killed after writing LATE files and syncing: its journal holds the
    metadata (the image as it was while mounted, copied, put in place once unmounted)."""
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-o", "loop", disk, str(where)], check=True)
    try:
        for i in range(LATE):
            write(where, f"/srv/late/f{i}", "written just before the crash\n")
        subprocess.run(["sync", "-f", str(where)], check=True)
        subprocess.run(["cp", "--sparse=always", "--reflink=never", disk, disk + ".crash"], check=True)
    finally:
        subprocess.run(["umount", str(where)], check=True)
    os.replace(disk + ".crash", disk)
    assert unclean(disk, "xfs"), "the test's disk is not dirty: it proves nothing"


def xfs_vm(tmp_path, storage: str):
    images = tmp_path / "images"
    image = tiny_image(images)
    env = make_env(tmp_path / "e", str(images))
    env.mk("tiny", "--hostname", "uc1", *OPTS, "--fs", "xfs", "--dir", storage, "--output", env.output, check=True)
    return env, image, f"{storage}/domains/uc1/disk.img"


def test_a_vm_destroyed_not_shut_down_is_read_from_a_replayed_copy(tmp_path, xfs_dir):
    before = host_state(str(tmp_path), ("uc1",))
    env, image, disk = xfs_vm(tmp_path, xfs_dir)
    crashed(disk, tmp_path / "m")
    digest = sha(disk)
    cp = capture(env, "uc1", "back", "--keep-xen", check=True)
    assert "was not shut down cleanly (/ (xfs)): reading reflinked copies" in cp.stdout + cp.stderr, cp.stdout
    got = os.path.join(os.path.dirname(image), "back")
    assert len(os.listdir(f"{got}/srv/late")) == LATE, "the journal's last changes are in the image"
    assert sha(disk) == digest and unclean(disk, "xfs"), "the VM's disk only read, its journal left as it was"
    assert [n for n in os.listdir(os.path.dirname(disk)) if n.startswith(".capture-")] == [], "no copy left"
    env.run("rmxenvm", "uc1", "--yes", check=True)
    assert host_state(str(tmp_path), ("uc1",)) == before


def test_on_storage_without_copies_it_is_one_fatal(tmp_path, as_root):
    env, image, disk = xfs_vm(tmp_path, str(tmp_path / "vms"))  # the test host's /tmp: no reflinks
    crashed(disk, tmp_path / "m")
    digest = sha(disk)
    line = fatal(capture(env, "uc1", "back", "--keep-xen"))
    assert "VM 'uc1' was not shut down cleanly: the journal of its / (xfs) holds changes" in line, line
    assert "shut it down cleanly (xl create " in line and "uc1.cfg, then xl shutdown -w uc1)" in line, line
    assert sorted(os.listdir(os.path.dirname(image))) == ["tiny"], "no image, no staging dir"
    assert sha(disk) == digest
    env.run("rmxenvm", "uc1", "--yes", check=True)


def test_a_foreign_raw_disk_copied_while_its_guest_ran_is_read_from_a_private_copy(tmp_path, as_root):
    before = host_state(str(tmp_path), ("fromdisk",))
    images = tmp_path / "images"
    image = tiny_image(images)
    env = make_env(tmp_path / "e", str(images))
    raw = str(tmp_path / "guest.raw")
    with open(raw, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.xfs", "-q", raw], check=True)
    (tmp_path / "fill").mkdir()
    subprocess.run(["mount", "-o", "loop", raw, str(tmp_path / "fill")], check=True)
    try:
        subprocess.run(["cp", "-a", f"{image}/.", str(tmp_path / "fill")], check=True)
        write(tmp_path / "fill", "/etc/fstab", "/dev/sda / xfs defaults 0 1\n")
    finally:
        subprocess.run(["umount", str(tmp_path / "fill")], check=True)
    crashed(raw, tmp_path / "m")
    digest = sha(raw)
    cp = capture(env, "--from-disk", raw, "v2v", check=True)
    assert "not cleanly unmounted: reading a private copy, its journal replayed" in cp.stdout + cp.stderr, cp.stdout
    assert len(os.listdir(images / "v2v" / "srv" / "late")) == LATE
    assert sha(raw) == digest, "the admin's file is never written"
    shutil.rmtree(images / "v2v")
    assert host_state(str(tmp_path), ("fromdisk",)) == before
