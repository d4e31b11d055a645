"""si_lsxenvm --drift for real: the Debian 12 image deployed on each populate path (mke2fs -d in
one pass, rsync into XFS, a reflink clone of a base on XFS) shows no drift; local edits show as
exactly those paths; the disk is never written; nothing stays mounted, even after a SIGKILL."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import need_tools

from .harness import REPO, host_state, make_env

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "1G", "--noswap", "--dhcp"]


@pytest.fixture(scope="module")
def image(debian12_image):
    need_tools("rsync", "mkfs.ext4", "mkfs.xfs", "losetup", "unshare", "findmnt")
    return debian12_image


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def loops_of(path: str) -> list[str]:
    return subprocess.run(["losetup", "-j", path], capture_output=True, text=True).stdout.splitlines()


def drift(env, *names: str, paths: bool = True) -> dict:
    cp = env.run("lsxenvm", "--drift", "--json", *(["--paths"] if paths else []), *names, check=True)
    (line,) = cp.stdout.splitlines()
    return json.loads(line)


def deploy(env, tmp_path, where: str, name: str, *extra: str) -> str:
    env.mk("debian12", "--hostname", name, *OPTS, "--dir", where, "--output", env.output, *extra, check=True)
    return f"{where}/domains/{name}/disk.img"


def assert_no_drift(got: dict, lost_found: bool) -> None:
    vm = got["vm"]
    assert vm["paths"] == {"added": ["/lost+found"] if lost_found else [], "changed": [], "removed": []}, vm["paths"]
    assert got["read"] == "offline" and got["image_now"]["moved_on"] is False and got["notes"] == []


@pytest.mark.parametrize("how,extra,method", [
    ("one-pass", (), "copy (mke2fs -d)"),  # ext4 filled by mke2fs -d: mtimes to the second
    ("rsync-xfs", ("--fs", "xfs", "--full-copy"), "Installation method: copy\n"),  # rsync -a, ns kept
])
def test_no_drift_right_after_a_deploy(image, tmp_path, how, extra, method):
    env = make_env(tmp_path, os.path.dirname(image))
    before = host_state(env.base)
    disk = deploy(env, tmp_path, env.dir, "d1", *extra)
    with open(f"{env.base}/log/d1.log") as f:
        assert method in f.read()
    digest = sha256(disk)
    got = drift(env, "d1")
    assert_no_drift(got, lost_found="xfs" not in extra)
    assert got["generation"]["how"] == "made" and got["generation"]["fingerprint"]
    assert sha256(disk) == digest, "--drift wrote to the disk"
    assert host_state(env.base) == before and loops_of(disk) == []
    assert not [n for n in os.listdir("/run") if n.startswith("si-xen.d1.")]


def test_no_drift_in_a_clone_on_xfs_and_a_copy_read_leaves_nothing(image, xfs_dir, tmp_path):
    from si_xen import drift as drift_
    from si_xen import journal

    env = make_env(tmp_path / "e", os.path.dirname(image))
    before = host_state(env.base)
    deploy(env, tmp_path, xfs_dir, "c1")
    disk = deploy(env, tmp_path, xfs_dir, "c2")
    assert os.listdir(f"{xfs_dir}/bases"), "not a clone"
    digest = sha256(disk)
    assert_no_drift(drift(env, "c2"), lost_found=True)
    # a running VM's read: its disks reflinked aside, each copy unlinked once mounted
    rec = journal.load(env.state, "c2").record
    rows, notes, classify = drift_.read_vm(rec, "copy", env.lock)
    assert "/etc/motd" in rows and notes == []
    # what an update leaves alone, read from the VM's own tree (its sshd's keys, its hostname)
    assert classify("/etc/ssh/ssh_host_ed25519_key", False) == "identity"
    assert classify("/etc/machine-id", False) == "identity" and classify("/etc/hostname", False) == "excluded"
    assert classify("/etc/motd", False) is None and classify("/dev/null", False) == "excluded"
    assert not glob.glob(f"{xfs_dir}/domains/c2/.drift-*") and loops_of(disk) == []
    assert sha256(disk) == digest
    for h in ("c1", "c2"):
        env.run("rmxenvm", h, "--yes", check=True)
    assert host_state(env.base) == before


def edit(disk: str, tmp_path) -> None:
    mnt = tmp_path / "edit"
    mnt.mkdir()
    subprocess.run(["mount", "-o", "loop", disk, str(mnt)], check=True)
    try:
        os.makedirs(mnt / "home" / "u")
        (mnt / "home" / "u" / "f").write_text("mine\n")
        os.makedirs(mnt / "srv" / "app")
        (mnt / "srv" / "app" / "db").write_text("data\n")
        (mnt / "etc" / "ssh" / "ssh_host_ed25519_key.pub").write_text("replaced\n")
        with open(mnt / "etc" / "motd", "a") as f:
            f.write("edited\n")
        os.unlink(mnt / "etc" / "debian_version")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_local_edits_are_exactly_what_drift_shows(image, tmp_path):
    env = make_env(tmp_path, os.path.dirname(image))
    before = host_state(env.base)
    disk = deploy(env, tmp_path, env.dir, "e1")
    edit(disk, tmp_path)
    digest = sha256(disk)
    got = drift(env, "e1")
    vm = got["vm"]
    # /home/* is in SystemImager's updateclient exclusions (excluded: an update never touches it); /srv/app
    # is the VM's own (local: kept); the host key is the VM's identity (si-xen wrote it: owned too)
    assert vm["paths"] == {"added": ["/home/u", "/home/u/f", "/lost+found", "/srv/app", "/srv/app/db"],
                           "changed": ["/etc/motd", "/etc/ssh/ssh_host_ed25519_key.pub"],
                           "removed": ["/etc/debian_version"]}
    assert (vm["added"], vm["changed"], vm["removed"]) == (5, 2, 1)
    assert vm["by_class"] == {"image": 2, "local": 2, "owned": 0, "identity": 1, "excluded": 3}
    assert {"dir": "/srv/app", "class": "local", "added": 1, "changed": 0, "removed": 0} in vm["by_dir"]
    assert {"dir": "/home/u", "class": "excluded", "added": 1, "changed": 0, "removed": 0} in vm["by_dir"]
    assert {"dir": "/etc", "class": "image", "added": 0, "changed": 1, "removed": 1} in vm["by_dir"]
    assert drift(env, "e1", paths=False)["vm"]["paths"] == {"added": [], "changed": [], "removed": []}
    text = env.run("lsxenvm", "--drift", "e1", check=True).stdout
    assert "VM: +5 ~2 -1 (image 2, local 2, identity 1, excluded 3)" in text and "image unchanged since" in text
    assert sha256(disk) == digest and host_state(env.base) == before
    # unknown names: a WARNING and exit 1, as without --drift
    cp = env.run("lsxenvm", "--drift", "nope")
    assert cp.returncode == 1 and "WARNING: VM 'nope' not found!" in cp.stderr


def test_image_moved_on_and_busy(image, tmp_path):
    from si_xen import locks

    images = tmp_path / "images"
    images.mkdir()
    subprocess.run(["cp", "-a", "--reflink=auto", image, str(images / "debian12")], check=True)
    env = make_env(tmp_path, str(images))
    deploy(env, tmp_path, env.dir, "m1")
    with open(images / "debian12" / "etc" / "motd", "a") as f:
        f.write("new release\n")
    (images / "debian12" / "etc" / "newfile").write_text("n\n")
    got = drift(env, "m1")
    now = got["image_now"]
    assert now["moved_on"] and (now["added"], now["changed"], now["removed"]) == (1, 1, 0)
    assert got["vm"]["paths"]["changed"] == []  # the VM is still its own generation
    with locks.exclusive(os.path.join(env.lock, "m1.lock")):
        busy = env.run("lsxenvm", "--drift", "m1", check=True).stdout
    assert f"busy (pid {os.getpid()})" in busy


def test_sigkill_of_the_vm_side_leaves_no_mount_no_loop_device(image, tmp_path):
    env = make_env(tmp_path, os.path.dirname(image))
    before = host_state(env.base)
    disk = deploy(env, tmp_path, env.dir, "k1")
    argv = [sys.executable, "-m", "si_xen.cli.lsxenvm", "--drift", "k1", "--config", env.config]
    p = subprocess.Popen(argv, env=dict(os.environ, SIS_CONFDIR=env.confdir, PYTHONPATH=REPO,
                                        SI_XEN_DRIFT_PAUSE="60"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    child = None
    try:
        for _ in range(300):  # the VM side: mounted, paused before its walk
            child = next((int(d) for d in os.listdir("/proc") if d.isdigit() and _is_vm_side(int(d))), None)
            if child and _mounted(child, "si-xen.k1.drift-"):
                break
            time.sleep(0.05)
        assert child and _mounted(child, "si-xen.k1.drift-"), "the VM side never mounted the disk"  # in its namespace
        assert loops_of(disk) and not _mounted(os.getpid(), "si-xen.k1.drift-")  # ... never here
        loop = os.path.basename(loops_of(disk)[0].split(":")[0])  # a ro mount's loop: read-only, autoclear
        assert [_read(f"/sys/block/{loop}/{n}") for n in ("ro", "loop/autoclear")] == ["1", "1"]
    except BaseException:
        for pid in (child, p.pid):
            if pid:
                os.kill(pid, signal.SIGKILL)
        p.communicate()
        raise
    os.kill(child, signal.SIGKILL)
    out, err = p.communicate(timeout=60)
    assert "could not read the VM's disks" in out + err
    for _ in range(100):  # the namespace's mounts go with it, then the autoclear loop device
        if not loops_of(disk):
            break
        time.sleep(0.05)
    assert loops_of(disk) == [] and host_state(env.base) == before
    assert subprocess.run(["findmnt", "-rn", "-S", disk], capture_output=True).returncode == 1
    assert not [n for n in os.listdir("/run") if n.startswith("si-xen.k1.")]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _mounted(pid: int, what: str) -> bool:
    try:
        with open(f"/proc/{pid}/mounts") as f:
            return any(what in line for line in f)
    except OSError:
        return False


def _is_vm_side(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"si_xen.vmread\0" in f.read()
    except OSError:
        return False
