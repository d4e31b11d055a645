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
from si_xen.sizes import parse_mib

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
            "etc/systemimager/disks-layout.xml", "etc/systemimager/autoinstallscript.conf",
            "etc/systemimager/mounted_filesystems")


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
        with open(os.path.join(root, "etc/fstab"), "a") as f:  # a network mount: its mount point's content stays out
            f.write("nfs.example:/export /mnt/nfs nfs ro,soft 0 0\n")
        write(root, "/mnt/nfs/shadowed", "under the mount\n")
    # the fstab edited after si-xen wrote it: kept as the VM has it in every capture (V2P lists it)
    out = {"etc/motd", "srv/", "srv/data/", "srv/data/new", "usr/share/doc/app/GONE", "mnt/", "mnt/nfs", "etc/fstab"}
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


@pytest.mark.parametrize("keep_xen", [True, False], ids=["keep-xen", "v2p"])
@pytest.mark.parametrize("where,layout", [("xfs", False), ("ext4", False), ("ext4", True)],
                         ids=["dir-xfs", "dir-ext4", "layout-image"])
def test_round_trip(where, layout, keep_xen, request, tmp_path):
    """--keep-xen: the image plus the change and what si-xen wrote; for physical machines (V2P) what
    si-xen wrote is undone (capture/reverse.py), so only the change, the identity and SystemImager's
    metadata may differ."""
    storage = request.getfixturevalue("xfs_dir") if where == "xfs" else str(tmp_path / "vms")
    before = host_state(str(tmp_path), ("u1",))
    env, image, vmdir = made(tmp_path, storage, layout)
    change = changed(tmp_path, vmdir, layout)
    disks = {n: os.stat(f"{vmdir}/{n}").st_mtime_ns for n in os.listdir(vmdir)}
    cp = capture(env, "u1", "back", *(["--keep-xen"] if keep_xen else []), check=True)
    assert "Captured u1 into image back" in cp.stdout, cp.stdout
    got = os.path.join(os.path.dirname(image), "back")
    diff = differences(image, got)
    allowed = change | set(IDENTITY) | set(NEVER_COPIED) | set(METADATA) | (owned_paths(env) if keep_xen else set())
    assert unexplained(diff, allowed) == {}
    if not keep_xen:
        assert not os.path.exists(f"{got}/var/lib/si-xen"), "si-xen's own dir goes"
        assert "not reversed: /etc/fstab: changed in the VM" in cp.stderr, f"what was not reversed is said:\n{cp.stderr}"
    assert "etc/motd" in diff and "srv/data/new" in diff, "the change is captured (the comparison sees it)"
    # the identity is gone; the copy kept links, hard links and owners
    assert not [n for n in os.listdir(f"{got}/etc/ssh") if n.startswith("ssh_host_")]
    assert os.path.getsize(f"{got}/etc/machine-id") == 0
    assert os.readlink(f"{got}/usr/share/doc/app/LINK") == "README"
    assert os.path.isdir(f"{got}/mnt/nfs") and os.listdir(f"{got}/mnt/nfs") == [], "a network mount's content is excluded"
    assert os.stat(f"{got}/usr/share/doc/app/HARD").st_ino == os.stat(f"{got}/usr/share/doc/app/README").st_ino
    # SystemImager's metadata: the layout parses back to the VM's filesystems, the stub is exact
    rec = record(env, "u1")
    if layout and not keep_xen:  # for physical machines the golden client's own layout, as the image has it
        with open(f"{image}/etc/systemimager/autoinstallscript.conf") as a, \
                open(f"{got}/etc/systemimager/autoinstallscript.conf") as b:
            assert a.read() == b.read()
        assert not os.path.exists(f"{got}/etc/systemimager/disks-layout.xml"), "the site's format only"
    else:  # made from the VM's disks (and fstab)
        with open(f"{got}/etc/systemimager/{'autoinstallscript.conf' if layout else 'disks-layout.xml'}") as f:
            fs = parse_layout(f.read(), "disks-layout.xml")
        assert sorted((e.mountpoint, e.fs, e.size_mib) for e in fs if e.fs in ("ext4", "xfs", "swap")) == sorted(
            (d["mountpoint"] or "swap", d["fs"], parse_mib(d["size"])) for d in rec["disks"])
    with open(f"{env.confdir}/rsync_stubs/40back") as f:
        assert f.read() == f"[back]\n\tpath={got}\n\n"
    with open(f"{got}/etc/systemimager/IMAGE_RETRIEVED_FROM") as f:
        assert f.read() == "u1\n"
    with open(f"{got}/etc/systemimager/mounted_filesystems") as f:  # as `mount` lists them, from the fstab
        mounts = f.read().splitlines()
    assert any(" on / type ext4 (" in m for m in mounts) and "nfs.example:/export on /mnt/nfs type nfs (ro,soft)" in mounts
    assert not [n for n in os.listdir(os.path.dirname(got)) if ".si-xen-" in n]
    assert {n: os.stat(f"{vmdir}/{n}").st_mtime_ns for n in os.listdir(vmdir)} == disks, "the VM only read"
    # and the captured image makes a VM again
    env.mk("back", "--hostname", "u2", *OPTS, "--dir", storage, "--output", env.output, check=True)
    for vm in ("u1", "u2"):
        env.run("rmxenvm", vm, "--yes", check=True)
    assert host_state(str(tmp_path), ("u1", "u2")) == before


def test_refusals_leave_nothing_and_force_and_update_replace_whole(tmp_path):
    storage = str(tmp_path / "vms")
    before = host_state(str(tmp_path), ("u1",))
    env, image, vmdir = made(tmp_path, storage)
    images = os.path.dirname(image)
    assert "no VM 'nope' made by si_mkxenvm" in fatal(capture(env, "nope", "back", "--keep-xen"))
    assert "invalid image name" in fatal(capture(env, "u1", "../x", "--keep-xen"))
    assert "exists at" in fatal(capture(env, "u1", "tiny", "--keep-xen")), "the image it was made from"
    assert "not there to update" in fatal(capture(env, "u1", "back", "--keep-xen", "--update"))
    assert "contradict" in fatal(capture(env, "u1", "back", "--keep-xen", "--update", "--force"))
    assert "give the VM and the image's name" in fatal(capture(env, "u1", "--keep-xen"))
    assert sorted(os.listdir(images)) == ["tiny"] and not os.path.exists(f"{env.confdir}/rsync_stubs/40back")
    capture(env, "u1", "back", "--keep-xen", check=True)
    first = manifest(f"{images}/back")
    assert "--force to replace it" in fatal(capture(env, "u1", "back", "--keep-xen"))
    assert manifest(f"{images}/back") == first, "an existing image is never touched without --force"
    with mounted(f"{vmdir}/disk.img", tmp_path / "m") as root:
        write(root, "/etc/motd", "second\n")
    ino, kept = os.stat(f"{images}/back").st_ino, os.stat(f"{images}/back/usr/share/doc/app/GONE").st_ino
    capture(env, "u1", "back", "--keep-xen", "--update", check=True)
    with open(f"{images}/back/etc/motd") as f:
        assert f.read() == "second\n"
    assert os.stat(f"{images}/back").st_ino != ino, "a new tree renamed into place"
    assert os.stat(f"{images}/back/usr/share/doc/app/GONE").st_ino == kept, "--update links what did not change"
    capture(env, "u1", "fresh", "--keep-xen", check=True)
    assert unexplained(differences(f"{images}/back", f"{images}/fresh"), set(METADATA)) == {}, \
        "an updated image is the image a new capture makes"
    capture(env, "u1", "back", "--keep-xen", "--force", check=True)
    assert sorted(os.listdir(images)) == ["back", "fresh", "tiny"], "nothing set aside is left"
    assert differences(f"{images}/back", f"{images}/back") == {}
    env.run("rmxenvm", "u1", "--yes", check=True)
    assert host_state(str(tmp_path), ("u1",)) == before


def running_env(tmp_path, env):
    """A fake xl (test_console's) saying u1 runs; the command run with Xen said to be there."""
    from .test_console import FAKE_XL, RUNNER

    bindir, state = tmp_path / "bin", tmp_path / "xl"
    (state / "domains").mkdir(parents=True)
    bindir.mkdir()
    (bindir / "xl").write_text(FAKE_XL)
    (bindir / "xl").chmod(0o755)
    (state / "domains" / "u1").touch()
    environ = dict(os.environ, SIS_CONFDIR=env.confdir, PYTHONPATH=REPO, FAKE_XL_STATE=str(state),
                   PATH=f"{bindir}:{os.environ['PATH']}")

    def run(*args):
        return subprocess.run([sys.executable, "-c", RUNNER, "getxenimage", *args, "--config", env.config],
                              env=environ, capture_output=True, text=True, timeout=300)
    return run


def test_an_image_a_killed_capture_set_aside_is_put_back_and_never_overwritten(tmp_path):
    """Killed between the renames of a --force (no RENAME_EXCHANGE): the old image aside, none in
    place. The next capture without --force puts it back and refuses, before copying anything."""
    env, image, vmdir = made(tmp_path, str(tmp_path / "vms"))
    images = os.path.dirname(image)
    os.makedirs(f"{images}/.back.si-xen-old-{2**22 + 7}/etc")  # a pid above pid_max's default: dead
    cp = capture(env, "u1", "back", "--keep-xen")
    assert "image 'back' exists at" in fatal(cp) and "Put back" in cp.stdout + cp.stderr
    assert sorted(os.listdir(images)) == ["back", "tiny"] and os.listdir(f"{images}/back") == ["etc"]
    env.run("rmxenvm", "u1", "--yes", check=True)


def test_si_mkrsyncd_conf_is_run_where_systemimagers_server_has_it(tmp_path):
    """As si_getimage: the stub written, then si_mkrsyncd_conf (a stand-in on PATH records its run);
    its failure is a warning, the image made."""
    env, image, vmdir = made(tmp_path, str(tmp_path / "vms"))
    bindir, marker = tmp_path / "sbin", tmp_path / "ran"
    bindir.mkdir()
    (bindir / "si_mkrsyncd_conf").write_text(f"#!/bin/sh\nls {env.confdir}/rsync_stubs >> {marker}\nexit ${{FAIL:-0}}\n")
    (bindir / "si_mkrsyncd_conf").chmod(0o755)
    path = f"{bindir}:{os.environ['PATH']}"
    run = dict(os.environ, SIS_CONFDIR=env.confdir, PYTHONPATH=REPO, PATH=path)
    argv = [sys.executable, "-m", "si_xen.cli.getxenimage", "u1", "back", "--keep-xen", "--config", env.config]
    cp = subprocess.run(argv, env=run, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0 and "(si_mkrsyncd_conf run: the rsync daemon serves it)" in cp.stdout, cp.stdout + cp.stderr
    assert marker.read_text() == "40back\n", "run once, after the stub was written"
    cp = subprocess.run([*argv[:4], "back2", *argv[5:]], env={**run, "FAIL": "1"}, capture_output=True, text=True, timeout=300)
    assert cp.returncode == 0 and "WARNING: si_mkrsyncd_conf failed" in cp.stdout + cp.stderr, cp.stdout + cp.stderr
    assert "(run si_mkrsyncd_conf to serve it)" in cp.stdout
    env.run("rmxenvm", "u1", "--yes", check=True)


def test_a_running_vm_needs_snapshot_and_storage_that_can_make_one(tmp_path, xfs_dir):
    before = host_state(str(tmp_path), ("u1",))
    env, image, vmdir = made(tmp_path, xfs_dir)
    run = running_env(tmp_path, env)
    tree = manifest(vmdir)
    assert fatal(run("u1", "back", "--keep-xen")) == "FATAL: VM 'u1' is running (add --snapshot, or xl shutdown u1 first)"
    cp = run("u1", "back", "--keep-xen", "--snapshot")  # XFS: read from reflinked copies
    assert cp.returncode == 0, cp.stderr
    assert os.path.isfile(os.path.join(os.path.dirname(image), "back", "etc/motd"))
    assert manifest(vmdir) == tree, "the VM's disks only read, no reflinked copy left beside them"
    assert (tmp_path / "xl" / "domains" / "u1").exists(), "the VM was left running"
    env.run("rmxenvm", "u1", "--yes", "--stop", check=False)
    assert host_state(str(tmp_path), ("u1",)) == before


def test_a_running_vm_on_storage_without_snapshots_is_refused(tmp_path):
    env, image, vmdir = made(tmp_path, str(tmp_path / "vms"))
    run = running_env(tmp_path, env)
    line = fatal(run("u1", "back", "--keep-xen", "--snapshot"))
    assert "is running and its storage cannot snapshot its disks" in line and "shut it down first" in line
    assert sorted(os.listdir(os.path.dirname(image))) == ["tiny"]


def test_a_full_image_dir_is_one_fatal_and_leaves_nothing(tmp_path, as_root):
    before = host_state(str(tmp_path), ("u1",))
    env, image, vmdir = made(tmp_path, str(tmp_path / "vms"))
    with mounted(f"{vmdir}/disk.img", tmp_path / "m") as root:
        with open(os.path.join(root, "srv.big"), "wb") as f:
            f.write(os.urandom(24 << 20))
    with loop_fs(tmp_path, "small", 16 << 20, ["mkfs.ext4", "-q", "-F"]) as small:
        with open(f"{env.confdir}/systemimager.conf", "a") as f:
            f.write(f"DEFAULT_IMAGE_DIR = {small}\n")
        line = fatal(capture(env, "u1", "back", "--keep-xen"))
        assert f"no room for the image in {small}" in line, line
        assert [n for n in os.listdir(small) if n != "lost+found"] == []
    env.run("rmxenvm", "u1", "--yes", check=True)
    for _ in range(50):  # the test's own small.img loop device is let go by the kernel after its umount
        if host_state(str(tmp_path), ("u1",)) == before:
            break
        time.sleep(0.1)
    assert host_state(str(tmp_path), ("u1",)) == before


def paused_capture(env, images: str) -> tuple[subprocess.Popen, list[str]]:
    """si_getxenimage u1 back, started in a session of its own and paused once its copy is made
    (SI_XEN_CAPTURE_PAUSE); (the process, [its staging dir's name])."""
    p = subprocess.Popen([sys.executable, "-m", "si_xen.cli.getxenimage", "u1", "back", "--keep-xen", "--config", env.config],
                         env=dict(os.environ, SIS_CONFDIR=env.confdir, PYTHONPATH=REPO, SI_XEN_CAPTURE_PAUSE="60"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    for _ in range(300):
        stage = [n for n in os.listdir(images) if n.startswith(".back.si-xen-new-")]
        if stage and os.path.isfile(os.path.join(images, stage[0], "etc/motd")):
            return p, stage
        time.sleep(0.1)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    raise AssertionError("the capture never got to copying")


def test_killed_mid_capture_leaves_a_staging_dir_the_next_run_removes(tmp_path):
    before = host_state(str(tmp_path), ("u1",))
    env, image, vmdir = made(tmp_path, str(tmp_path / "vms"))
    images = os.path.dirname(image)
    p, stage = paused_capture(env, images)
    try:
        assert host_state(str(tmp_path), ("u1",))["mounts"] == [], "its mounts are in its own namespace"
        assert "another si_* command" in fatal(env.run("updatexenvm", "u1")), "the VM's lock is held while it is read"
        assert "another si_* command" in fatal(capture(env, "u1", "other", "--keep-xen"))
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert stage[0] in os.listdir(images) and not os.path.exists(f"{images}/back")
    cp = capture(env, "u1", "back", "--keep-xen", check=True)
    assert "left by a capture that was killed" in cp.stdout
    assert sorted(os.listdir(images)) == ["back", "tiny"]
    env.run("rmxenvm", "u1", "--yes", check=True)
    assert host_state(str(tmp_path), ("u1",)) == before


def _children_of_capture() -> list[int]:
    """Processes of a capture's copy (its child in a private namespace, its rsync)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"si_xen.capture.copy" in cmd or (cmd.startswith(b"rsync\0") and b"si-xen-new" in cmd):
            out.append(int(pid))
    return out


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_signal_to_the_command_alone_ends_its_copy_too(sig, tmp_path):
    """kill PID (SIGTERM: the capture undone, nothing staged left) or kill -9 PID of the command
    only, not its group: its copy's child and rsync end with it, so no copy writes on into a staging
    dir, and its mounts go with its namespace."""
    before = host_state(str(tmp_path), ("u1",))
    env, image, vmdir = made(tmp_path, str(tmp_path / "vms"))
    images = os.path.dirname(image)
    p, _stage = paused_capture(env, images)
    try:
        assert _children_of_capture(), "its copy runs in a child"
        p.send_signal(sig)
        err = p.communicate(timeout=60)[1].decode()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    for _ in range(100):  # a parent-death signal is sent at once; its delivery takes a moment
        if not _children_of_capture():
            break
        time.sleep(0.1)
    assert _children_of_capture() == [], "the copy outlived the command"
    assert p.returncode != 0 and "Traceback" not in err, err
    if sig == signal.SIGTERM:  # undone: nothing staged left
        assert sorted(os.listdir(images)) == ["tiny"], os.listdir(images)
    capture(env, "u1", "back", "--keep-xen", check=True)  # after SIGKILL the next run clears the staging dir
    assert sorted(os.listdir(images)) == ["back", "tiny"]
    env.run("rmxenvm", "u1", "--yes", check=True)
    assert host_state(str(tmp_path), ("u1",)) == before
