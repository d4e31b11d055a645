"""si_updatexenvm on real disks: a VM made, its image changed and its tree edited, then updated
(copy on write on XFS, in place on ext4), killed at each step, dry-run."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from .harness import REPO, debugfs_cat, host_state, make_env, manifest, mounted, record, tiny_image, write

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "512M", "--noswap", "--ip", "192.0.2.10", "--netmask", "255.255.255.0",
        "--gateway", "192.0.2.1"]
IDENTITY = ("/etc/ssh/ssh_host_ed25519_key", "/etc/ssh/ssh_host_rsa_key.pub", "/etc/machine-id", "/etc/hostname",
            "/etc/network/interfaces", "/etc/fstab")


def identity(disk: str) -> dict:
    return {p: debugfs_cat(disk, p) for p in IDENTITY}


def made(tmp_path, storage: str):
    images = tmp_path / "images"
    image = tiny_image(images)
    write(image, "/usr/share/doc/old/README", "going\n")
    write(image, "/etc/issue.d/keep", "stays\n")
    env = make_env(tmp_path / "e", str(images))
    env.mk("tiny", "--hostname", "u1", *OPTS, "--dir", storage, "--output", env.output, check=True)
    disk = f"{storage}/domains/u1/disk.img"
    with mounted(disk, tmp_path / "m") as root:  # the VM's own life
        write(root, "/home/u/notes", "mine\n")
        write(root, "/var/lib/app/db", "data\n")
        write(root, "/etc/motd", "edited in the VM\n")
    # the image's next generation: a file added, one changed, one removed
    write(image, "/etc/new.conf", "new\n")
    write(image, "/etc/motd", "release 2\n")
    os.unlink(os.path.join(image, "usr/share/doc/old/README"))
    os.rmdir(os.path.join(image, "usr/share/doc/old"))
    return env, image, disk


def leftovers(storage: str) -> list[str]:
    """Anything beside the VM's disk and kernel files: a copy or an old disk kept by mistake."""
    return sorted(set(os.listdir(f"{storage}/domains/u1")) - {"disk.img", "vmlinuz", "initrd.img"})


def assert_updated(disk: str, before: dict) -> None:
    assert debugfs_cat(disk, "/etc/new.conf") == "new\n"
    assert debugfs_cat(disk, "/etc/motd") == "release 2\n", "an image file edited in the VM is set back"
    assert debugfs_cat(disk, "/usr/share/doc/old/README") is None, "what the image removed goes"
    assert debugfs_cat(disk, "/home/u/notes") == "mine\n" and debugfs_cat(disk, "/var/lib/app/db") == "data\n"
    assert debugfs_cat(disk, "/etc/systemimager/IMAGE_LAST_SYNCED_TO") is not None
    assert identity(disk) == before, "the VM's identity is kept byte for byte"
    assert subprocess.run(["e2fsck", "-fn", disk], capture_output=True).returncode == 0


@pytest.mark.parametrize("where", ["xfs", "ext4"])
def test_update_brings_the_image_and_keeps_identity_and_local_data(where, xfs_dir, tmp_path):
    storage = xfs_dir if where == "xfs" else str(tmp_path / "vms")
    before_host = host_state(str(tmp_path), ("u1",))
    env, image, disk = made(tmp_path, storage)
    before, ino, old = identity(disk), os.stat(disk).st_ino, record(env, "u1")
    out = env.run("updatexenvm", "u1", check=True).stdout
    assert ("copy" if where == "xfs" else "in place") in out
    assert_updated(disk, before)
    assert (os.stat(disk).st_ino != ino) == (where == "xfs"), "copy on write replaces the disk; in place keeps it"
    new = record(env, "u1")
    assert new["image_fingerprint"] != old["image_fingerprint"] and new["updated"] and len(new["updates"]) == 1
    assert new["ssh_fingerprints"] == old["ssh_fingerprints"] and new["mac"] == old["mac"]
    assert leftovers(storage) == []
    again = env.run("updatexenvm", "u1", check=True).stdout  # nothing left to bring
    assert "fetched 0, deleted 0" in again
    env.run("rmxenvm", "u1", "--yes", check=True)
    assert host_state(str(tmp_path), ("u1",)) == before_host


def test_dry_run_changes_nothing(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    sha = hashlib.sha256(open(disk, "rb").read()).hexdigest()
    mtime, journal = os.stat(disk).st_mtime_ns, open(f"{env.state}/vms/u1.journal").read()
    out = env.run("updatexenvm", "u1", "--dry-run", check=True).stdout
    assert "would delete" in out and "Dry run: nothing was changed." in out
    assert hashlib.sha256(open(disk, "rb").read()).hexdigest() == sha and os.stat(disk).st_mtime_ns == mtime
    assert open(f"{env.state}/vms/u1.journal").read() == journal
    assert host_state(str(tmp_path), ("u1",))["mounts"] == []


def test_no_delete_and_delete_local(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    env.run("updatexenvm", "u1", "--no-delete", check=True)
    assert debugfs_cat(disk, "/usr/share/doc/old/README") == "going\n"
    assert debugfs_cat(disk, "/etc/new.conf") == "new\n"
    env.run("updatexenvm", "u1", "--delete-local", check=True)
    assert debugfs_cat(disk, "/var/lib/app/db") is None
    assert debugfs_cat(disk, "/home/u/notes") == "mine\n", "/home/* is SystemImager's exclusion: never touched"
    assert debugfs_cat(disk, "/etc/ssh/ssh_host_ed25519_key") is not None, "identity is never local data"


COPY_STEPS = ["snapshot", "mount", "plan", "delete", "transfer", "fixups", "unmount", "swap", "discard", "record"]
IN_PLACE_STEPS = ["mount", "plan", "delete", "transfer", "fixups", "unmount", "record"]
IN_PLACE_BEGUN = IN_PLACE_STEPS[IN_PLACE_STEPS.index("delete"):]  # the VM's tree may have changed


@pytest.mark.parametrize("where,step", [("xfs", s) for s in COPY_STEPS] + [("ext4", s) for s in IN_PLACE_STEPS])
def test_killed_at_each_step_the_next_run_finishes_or_rm_removes(where, step, xfs_dir, tmp_path, monkeypatch):
    storage = xfs_dir if where == "xfs" else str(tmp_path / "vms")
    before_host = host_state(str(tmp_path), ("u1",))
    env, image, disk = made(tmp_path, storage)
    before = identity(disk)
    monkeypatch.setenv("SI_XEN_KILL_AT", step)
    killed = env.run("updatexenvm", "u1")
    assert killed.returncode == -9, killed.stderr
    monkeypatch.delenv("SI_XEN_KILL_AT")
    listed = env.run("lsxenvm", "u1", check=True).stdout
    assert "unfinished update (pid " in listed and f"stopped in step '{step}'" in listed
    out = env.run("updatexenvm", "u1", check=True)
    assert "did not finish; finishing it" in out.stderr
    # killed in place once its changes began, every fixup runs again (what it copied is no change now)
    assert ("Running hooks again: hwclock, console" in out.stdout) == (where == "ext4" and step in IN_PLACE_BEGUN)
    assert_updated(disk, before)
    assert leftovers(storage) == [], "no copy left beside the disk"
    env.run("rmxenvm", "u1", "--yes", check=True)
    assert host_state(str(tmp_path), ("u1",)) == before_host


def test_killed_in_place_then_removed(tmp_path, monkeypatch):
    before_host = host_state(str(tmp_path), ("u1",))
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    monkeypatch.setenv("SI_XEN_KILL_AT", "transfer")
    assert env.run("updatexenvm", "u1").returncode == -9
    monkeypatch.delenv("SI_XEN_KILL_AT")
    assert "unfinished update" in env.run("lsxenvm", "u1", check=True).stdout
    env.run("rmxenvm", "u1", "--yes", check=True)
    assert not os.path.exists(disk)
    assert host_state(str(tmp_path), ("u1",)) == before_host


def test_bad_inputs_say_one_fatal_and_change_nothing(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    sha = hashlib.sha256(open(disk, "rb").read()).hexdigest()
    for args, says in ((["nosuch"], "no VM 'nosuch' made by si_mkxenvm"),
                       (["u1", "--no-delete", "--delete-local"], "contradict"),
                       (["u1", "--image", "gone"], "gone"),
                       ([], "name the VMs, or give --all IMAGE"),
                       (["u1", "--all", "tiny"], "give no NAME with it")):
        cp = env.run("updatexenvm", *args)
        lines = [x for x in cp.stderr.splitlines() if x.startswith("FATAL:")]
        assert cp.returncode != 0 and len(lines) == 1 and says in lines[0], cp.stderr
        assert "Traceback" not in cp.stderr
    assert hashlib.sha256(open(disk, "rb").read()).hexdigest() == sha


def test_all_updates_every_vm_of_the_image_and_a_broken_one_fails_alone(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    for h in ("u2", "u3"):
        env.mk("tiny", "--hostname", h, *OPTS[:-6], "--dhcp", "--dir", str(tmp_path / "vms"), "--output", env.output,
               check=True)
    broken = f"{tmp_path}/vms/domains/u3/disk.img"
    with open(broken, "r+b") as f:  # its superblock gone: it cannot be mounted
        f.seek(1024)
        f.write(b"\0" * 4096)
    cp = env.run("updatexenvm", "--all", "tiny")
    assert cp.returncode == 1
    assert "2 of 3 VMs updated" in cp.stdout and "u3" in cp.stderr and "Traceback" not in cp.stderr
    for d in (disk, f"{tmp_path}/vms/domains/u2/disk.img"):
        assert debugfs_cat(d, "/etc/new.conf") == "new\n"
    assert "unfinished" not in env.run("lsxenvm", check=True).stdout
    cp = env.run("updatexenvm", "--all", "nosuch")
    assert cp.returncode == 1 and "FATAL: no VM made from image 'nosuch'" in cp.stderr


def tree_of(disk: str, where) -> str:
    """The VM's files as a manifest (a refused update in place mounts the disk: its superblock's mount
    count and times change, never a file)."""
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-o", "ro,loop,noload", disk, str(where)], check=True)
    try:
        return manifest(str(where))
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_image_gone_and_disk_full_change_nothing(tmp_path):
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    sha, tree = hashlib.sha256(open(disk, "rb").read()).hexdigest(), tree_of(disk, tmp_path / "ro")
    os.rename(image, image + ".away")
    cp = env.run("updatexenvm", "u1")
    assert cp.returncode == 1 and "FATAL: image 'tiny' not found" in cp.stderr and "Traceback" not in cp.stderr
    assert hashlib.sha256(open(disk, "rb").read()).hexdigest() == sha, "refused before the disk was opened"
    os.rename(image + ".away", image)
    os.makedirs(os.path.join(image, "opt/big"), exist_ok=True)
    for i in range(6):
        with open(os.path.join(image, f"opt/big/{i}"), "wb") as f:
            f.write(os.urandom(1 << 20) * 100)  # 600 MiB: more than the VM's 512M disk holds
    cp = env.run("updatexenvm", "u1")
    lines = [x for x in cp.stderr.splitlines() if x.startswith("FATAL:")]
    assert cp.returncode == 1 and len(lines) == 1 and "MiB more for this update" in lines[0], cp.stderr
    assert tree_of(disk, tmp_path / "ro") == tree
    assert "unfinished" not in env.run("lsxenvm", check=True).stdout
    assert host_state(str(tmp_path), ("u1",))["mounts"] == []


def test_a_running_vm_is_refused_or_restarted_and_never_destroyed(tmp_path):
    """A fake xl (test_console's) says the VM runs: refused without --restart; with it, shut down
    (never destroyed), updated and started again; one that does not stop is left running, unchanged."""
    from .test_console import FAKE_XL, RUNNER

    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    bindir, state = tmp_path / "bin", tmp_path / "xl"
    bindir.mkdir()
    (state / "domains").mkdir(parents=True)
    (bindir / "xl").write_text(FAKE_XL)
    (bindir / "xl").chmod(0o755)
    (state / "domains" / "u1").touch()
    environ = dict(os.environ, SIS_CONFDIR=env.confdir, PYTHONPATH=REPO, FAKE_XL_STATE=str(state),
                   PATH=f"{bindir}:{os.environ['PATH']}")

    def run(*args, **extra):
        return subprocess.run([sys.executable, "-c", RUNNER, "updatexenvm", *args, "--config", env.config],
                              env=dict(environ, **extra), capture_output=True, text=True, timeout=120)

    tree = tree_of(disk, tmp_path / "ro")
    cp = run("u1")
    assert cp.returncode == 1 and "FATAL: VM 'u1' is running (add --restart, or xl shutdown u1 first)" in cp.stderr
    cp = run("u1", "--restart", "--timeout", "2", FAKE_XL_STUCK="1")
    assert cp.returncode == 1 and "did not shut down within 2 s (its shutdown was asked for; it was never destroyed); VM 'u1' was " \
        "not changed" in cp.stderr
    assert (state / "domains" / "u1").exists() and tree_of(disk, tmp_path / "ro") == tree
    cp = run("u1", "--restart")
    assert cp.returncode == 0, cp.stderr
    calls = (state / "calls").read_text()
    assert "shutdown -w u1" in calls and f"create {env.output}/u1.cfg" in calls and "destroy" not in calls
    assert (state / "domains" / "u1").exists(), "started again"
    assert debugfs_cat(disk, "/etc/new.conf") == "new\n"


def test_a_vm_made_by_an_older_si_xen_is_updated_two_way(tmp_path):
    """A record without the request, the owned paths and a manifest of its generation (si-xen < 0.2):
    updated with a WARNING, what the image removed is kept (nothing says it was the image's), identity kept."""
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    before = identity(disk)
    path = f"{env.state}/vms/u1.journal"
    lines = [json.loads(x) for x in open(path)]
    for entry in lines:
        for key in ("request", "source", "owned", "owned_facts"):
            entry.get("record", {}).pop(key, None)
    with open(path, "w") as f:
        f.write("".join(json.dumps(e) + "\n" for e in lines))
    for m in os.listdir(f"{env.state}/images"):
        if m.startswith("manifest-"):
            os.unlink(f"{env.state}/images/{m}")
    cp = env.run("updatexenvm", "u1", check=True)
    assert "made by an older si-xen" in cp.stderr and "Traceback" not in cp.stderr
    assert debugfs_cat(disk, "/etc/new.conf") == "new\n" and debugfs_cat(disk, "/etc/motd") == "release 2\n"
    assert debugfs_cat(disk, "/usr/share/doc/old/README") == "going\n", "two-way: nothing known to be the image's"
    assert identity(disk) == before
    assert record(env, "u1")["owned"], "the update records what the fixups it ran own"


def test_update_to_another_image_is_recorded_and_followed(tmp_path):
    """--image: the VM follows that image from then on (its record, --all, the next plain update)."""
    env, image, disk = made(tmp_path, str(tmp_path / "vms"))
    other = os.path.join(os.path.dirname(image), "tiny2")
    subprocess.run(["cp", "-a", image, other], check=True)
    write(other, "/etc/other", "tiny2\n")
    env.run("updatexenvm", "u1", "--image", "tiny2", check=True)
    rec = record(env, "u1")
    assert rec["image"] == "tiny2" and rec["request"]["image"] == "tiny2"
    assert debugfs_cat(disk, "/etc/other") == "tiny2\n"
    write(other, "/etc/other", "tiny2 again\n")
    env.run("updatexenvm", "--all", "tiny2", check=True)  # one VM of tiny2: updated as si_updatexenvm u1
    assert debugfs_cat(disk, "/etc/other") == "tiny2 again\n"


def test_an_update_keeps_the_old_disk_a_rebuild_kept(xfs_dir, tmp_path):
    """--rebuild --keep-old leaves disk.img.si-old as the VM's; an update's own old disk is another."""
    env, image, disk = made(tmp_path, xfs_dir)
    env.mk("--rebuild", "u1", "--keep-old", check=True)
    kept = f"{xfs_dir}/domains/u1/disk.img.si-old"
    assert os.path.isfile(kept)
    env.run("updatexenvm", "u1", check=True)
    assert os.path.isfile(kept) and record(env, "u1")["old_disks"] == [kept]
    assert not os.path.exists(f"{xfs_dir}/domains/u1/disk.img.upd-old")
    env.run("rmxenvm", "u1", "--yes", check=True)
    assert not os.path.exists(kept)
