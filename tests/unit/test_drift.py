"""drift.py: a VM compared with its generation's manifest (si-xen's writes laid over it), each
difference classed, the image's move since, the JSON line; no process is started (the VM side
and the image's walk are faked)."""

import json
import os
import stat
from types import SimpleNamespace

import pytest

from si_xen import drift, locks, vmread
from si_xen.image import manifest, survey
from si_xen.journal import State
from si_xen.record import DiskRecord, VmRecord

D, F, L = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777
S = 1_700_000_000_000_000_000


def f(size=1, mtime=S, mode=F, uid=0, target=""):
    return (mode, uid, 0, size, mtime, 0, target)


IMAGE = {"/etc": f(mode=D), "/etc/motd": f(5), "/etc/hosts": f(9), "/etc/hostname": f(4), "/bin": f(7, mode=L, target="usr/bin"),
         "/usr": f(mode=D), "/usr/x": f(3), "/var": f(mode=D), "/var/log": f(mode=D), "/var/log/syslog": f(10)}


def vm_after_deploy():
    vm = dict(IMAGE)
    vm["/etc/hosts"] = f(40, mtime=S + 5 * 10**9 + 7)  # the hostname fixup's
    vm["/lost+found"] = f(mode=D | 0o700)
    return vm


OWNED = {"/etc/hosts": [F, 0, 0, 40, S + 5 * 10**9 + 7], "/etc/gone": None}


def test_a_vm_as_deployed_has_no_drift_but_its_lost_found():
    d, classes = drift.compare(IMAGE, OWNED, vm_after_deploy())
    assert (d.added, d.changed, d.removed) == (("/lost+found",), (), ())
    assert classes == {"/lost+found": "excluded"}


def test_mtimes_compare_in_whole_seconds_as_mke2fs_d_keeps_them():
    vm = vm_after_deploy()
    vm["/etc/motd"] = f(5, mtime=S + 999_999_999 - 999_999_999)  # same second, ns dropped
    vm["/usr/x"] = f(3, mtime=S + 123)  # ns only
    assert len(drift.compare(IMAGE, OWNED, vm)[0]) == 1
    vm["/usr/x"] = f(3, mtime=S + 10**9)  # a second later: changed
    assert drift.compare(IMAGE, OWNED, vm)[0].changed == ("/usr/x",)


def test_each_difference_gets_its_class():
    vm = vm_after_deploy()
    vm["/etc/motd"] = f(6)  # an image file edited: image
    del vm["/usr/x"]  # an image file removed: image
    vm["/home/u/f"] = f(2)  # local
    vm["/etc/hosts"] = f(41)  # si-xen's, changed since: owned
    vm["/etc/gone"] = f(1)  # si-xen removed it, it is back: owned
    vm["/lib/modules/6.1/k.ko"] = f(1)  # in a tree si-xen wrote whole: owned
    vm["/etc/hostname"] = f(5)  # identity, by the pluggable rules
    vm["/var/log/syslog"] = f(11)  # excluded, by the pluggable rules
    vm["/tmp/x"] = f(1)  # excluded at install time, whatever the rules say
    seen = []

    def classify(path, is_dir):
        seen.append((path, is_dir))
        return {"/etc/hostname": "identity", "/var/log/syslog": "excluded"}.get(path)

    d, classes = drift.compare(IMAGE, OWNED, vm, ("/lib/modules/6.1/",), classify)
    assert classes == {"/etc/motd": "image", "/usr/x": "image", "/home/u/f": "local", "/etc/hosts": "owned",
                       "/etc/gone": "owned", "/lib/modules/6.1/k.ko": "owned", "/etc/hostname": "identity",
                       "/var/log/syslog": "excluded", "/tmp/x": "excluded", "/lost+found": "excluded"}
    assert d.removed == ("/usr/x",) and "/home/u/f" in d.added and "/etc/motd" in d.changed
    assert ("/lost+found", True) in seen and ("/etc/motd", False) in seen


def test_an_owned_symlink_compares_by_its_recorded_facts():
    vm = vm_after_deploy()
    vm["/etc/resolv.conf"] = f(20, mode=L, target="/run/x")
    owned = {**OWNED, "/etc/resolv.conf": [L, 0, 0, 20, S]}
    assert drift.compare(IMAGE, owned, vm)[0].added == ("/lost+found",)


def test_json_line_has_the_designed_shape_and_paths_only_when_asked():
    v = drift.VmDrift("web01", "debian12", "stopped", "offline", 0.421,
                      {"fingerprint": "ab", "image_time": "t", "since": "s", "how": "made"},
                      {"fingerprint": "cd", "moved_on": True, "added": 3, "changed": 140, "removed": 2},
                      ("/home/u/f", "/var/log/a"), ("/etc/motd",), ("/usr/x",),
                      {"/home/u/f": "local", "/var/log/a": "excluded", "/etc/motd": "image", "/usr/x": "image"})
    j = json.loads(json.dumps(v.to_json()))
    assert set(j) >= {"name", "image", "state", "read", "seconds", "generation", "image_now", "vm"}
    assert j["seconds"] == 0.42 and j["image_now"]["changed"] == 140
    assert {k: j["vm"][k] for k in ("added", "changed", "removed")} == {"added": 2, "changed": 1, "removed": 1}
    assert j["vm"]["by_class"] == {"image": 2, "local": 1, "owned": 0, "identity": 0, "excluded": 1}
    assert {"dir": "/etc", "class": "image", "added": 0, "changed": 1, "removed": 0} in j["vm"]["by_dir"]
    assert {"dir": "/var/log", "class": "excluded", "added": 1, "changed": 0, "removed": 0} in j["vm"]["by_dir"]
    assert j["vm"]["paths"] == {"added": [], "changed": [], "removed": []}
    assert v.to_json(paths=True)["vm"]["paths"]["removed"] == ["/usr/x"]
    text = "\n".join(v.text())
    assert "image moved on to cd: +3 ~140 -2" in text and "/var/log" in text


# -- drift(): the plumbing, with the image's walk and the VM's read faked ------------------------

class SyncAhead:
    """proc.Ahead without the fork."""

    def __init__(self, fn, *args):
        self.status, self.value = None, fn(*args)

    def result(self):
        self.status = 0
        return self.value

    def close(self):
        self.status = -9


@pytest.fixture
def world(tmp_path, monkeypatch):
    img = tmp_path / "img"
    (img / "etc").mkdir(parents=True)
    (img / "etc" / "motd").write_text("hello\n")
    (img / "usr").mkdir()
    (img / "usr" / "x").write_text("x")
    state = tmp_path / "state"
    (state / "vms").mkdir(parents=True)
    settings = SimpleNamespace(paths={"state_dir": str(state), "lock_dir": str(tmp_path / "lock"),
                                      "cache_dir": str(tmp_path / "cache")})
    facts = str(state / "images")
    fp = survey.survey(str(img), facts).fingerprint  # the deploy's walk saved its manifest
    monkeypatch.setattr(drift.proc, "Ahead", SyncAhead)
    opened = []
    monkeypatch.setattr(drift, "open_image", lambda rec, paths: opened.append(rec.name) or str(img))
    vm = survey.manifest_of(str(img))
    read = []

    def read_vm(rec, mode, lock_dir):
        read.append((rec.name, mode))
        return dict(vm), [], None

    monkeypatch.setattr(drift, "read_vm", read_vm)
    monkeypatch.setattr(vmread, "unclean", lambda rec: [])  # their disks: cleanly shut down
    return SimpleNamespace(img=img, fp=fp, settings=settings, vm=vm, read=read, opened=opened, facts=facts)


def state(name, fp, **kw):
    rec = VmRecord(name, "debian12", image_fingerprint=fp, storage="dir", created="2026-12-04 10:00",
                   disks=(DiskRecord("xvda2", "/", "ext4", "2G", f"/x/{name}/disk.img"),), **kw)
    return State(name, f"/x/{name}.journal", record=rec)


def test_drift_of_an_untouched_vm_and_an_edited_one_one_image_walk(world):
    world.vm["/home"] = f(mode=D)
    world.vm["/home/f"] = f(1)
    out = drift.drift([state("a", world.fp), state("b", world.fp)], world.settings, {"b"})
    assert world.opened == ["a"]  # one walk of the image for both
    assert [o.state for o in out] == ["stopped", "running"]
    assert out[0].image_now == {"fingerprint": world.fp, "moved_on": False, "added": 0, "changed": 0, "removed": 0}
    assert out[0].added == ("/home", "/home/f") and out[0].by_class()["local"] == 2
    assert out[0].generation == {"fingerprint": world.fp, "image_time": None, "since": "2026-12-04 10:00", "how": "made"}
    assert out[1].read in ("copy", "live") and world.read[0] == ("a", "offline")


def test_one_image_walk_for_the_vms_of_one_image(world, monkeypatch):
    monkeypatch.setattr(drift, "image_key", lambda rec: ("debian12",))
    drift.drift([state("a", world.fp), state("b", world.fp)], world.settings, None)
    assert world.opened == ["a"]


def test_image_moved_on_is_counted_and_its_manifest_saved(world):
    (world.img / "etc" / "motd").write_text("changed!\n")
    (world.img / "etc" / "new").write_text("n")
    (out,) = drift.drift([state("a", world.fp)], world.settings, None)
    now = out.image_now
    assert now["moved_on"] and (now["added"], now["changed"], now["removed"]) == (1, 1, 0)
    assert manifest.load(world.facts, now["fingerprint"]) is not None
    assert out.state == "unknown"
    assert out.changed == () and out.added == ()  # the VM is compared with its own generation


def test_a_record_without_a_manifest_is_compared_with_the_image_now(world):
    os.unlink(manifest.path_for(world.facts, world.fp))
    world.vm["/etc/motd"] = f(99)
    (out,) = drift.drift([state("old", "")], world.settings, None)
    assert any("compared with the image now" in n for n in out.notes)
    assert out.changed == ("/etc/motd",) and out.classes["/etc/motd"] == "image"


def test_image_gone_is_a_note_not_a_fatal(world, monkeypatch):
    from si_xen.errors import Fatal

    def gone(rec, paths):
        raise Fatal("image 'debian12' not found", "x")

    monkeypatch.setattr(drift, "open_image", gone)
    (out,) = drift.drift([state("a", world.fp)], world.settings, None)
    assert out.image_now is None and any("cannot be opened now" in n for n in out.notes)
    assert out.added == ()  # still compared with its generation's manifest


def test_a_busy_vm_is_not_read_and_says_who_holds_it(world):
    with locks.exclusive(os.path.join(world.settings.paths["lock_dir"], "a.lock")):
        (out,) = drift.drift([state("a", world.fp)], world.settings, None)
    assert out.busy == os.getpid() and world.read == []
    assert f"busy (pid {os.getpid()})" in out.text()[0] and "vm" not in out.to_json()


def test_an_unfinished_deploy_is_listed_not_read(world):
    st = State("half", "/x/half.journal", begin=VmRecord("half", "debian12", complete=False))
    (out,) = drift.drift([st], world.settings, None)
    assert out.state == "incomplete" and world.read == []


def test_paths_needs_drift(capsys):
    from si_xen.cli import lsxenvm

    with pytest.raises(SystemExit) as e:
        lsxenvm.main(["--paths"])
    assert e.value.code == 1 and "--paths goes with --drift" in capsys.readouterr().err


def test_drift_needs_root(monkeypatch, capsys):
    from si_xen.cli import lsxenvm

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(SystemExit) as e:
        lsxenvm.main(["--drift", "--config", "/nonexistent/xen.conf"])
    assert e.value.code == 1 and "must be run as root" in capsys.readouterr().err


@pytest.mark.parametrize("storage,running,reflinks,dirty,mode", [
    ("dir", False, True, False, "offline"), ("dir", True, True, False, "copy"), ("dir", True, False, False, "live"),
    ("lvm", True, True, False, "live"), ("given", True, True, False, "live"),
    # stopped, its journal holding changes: read from a private copy, replayed, where one can be made
    ("dir", False, True, True, "copy"), ("dir", False, False, True, "live")])
def test_how_a_vm_is_read(monkeypatch, storage, running, reflinks, dirty, mode):
    from si_xen.storage import reflink

    monkeypatch.setattr(reflink, "reflinks_work", lambda d: reflinks)
    monkeypatch.setattr(vmread, "unclean", lambda rec: ["/ (ext4)"] if dirty else [])
    rec = VmRecord("a", storage=storage, disks=(DiskRecord("xvda2", "/", "ext4", "1G", "/x/a/disk.img"),))
    assert vmread.read_mode(rec, running) == mode


def test_a_running_thin_vm_is_read_from_tagged_snapshots_removed_after(fp, monkeypatch, tmp_path):
    """Only the commands: the test host has no LVM."""
    where = tmp_path / "m"
    monkeypatch.setattr(vmread.tempfile, "mkdtemp", lambda **kw: where.mkdir() or str(where))
    rec = VmRecord("a", storage="lvm", storage_root="vg0", thin_pool="pool",
                   disks=(DiskRecord("xvda2", "/", "ext4", "1G", "/dev/vg0/a-disk"),
                          DiskRecord("xvda1", "", "swap", "1G", "/dev/vg0/a-swap")))
    fp.register(["lvs", "--noheadings", "-o", "lv_tags", "vg0/a-disk.drift"], stdout="  si_xen_drift\n")  # a stale one
    fp.register(["lvremove", "--yes", "vg0/a-disk.drift"], occurrences=2)
    fp.register(["lvcreate", "--yes", "-s", "-kn", "-n", "a-disk.drift", "--addtag", "si_xen_drift", "vg0/a-disk"])
    fp.register(["lvchange", "-ay", "vg0/a-disk.drift"])
    fp.register(["unshare", fp.any()], returncode=137)  # the VM side killed
    assert vmread.read_mode(rec, True) == "snapshot"
    with pytest.raises(vmread.proc.ProcError):
        vmread.read_vm(rec, "snapshot", str(tmp_path))
    (call,) = [c for c in fp.calls if c[0] == "unshare"]
    spec = json.loads(call[-1])
    assert [d[0] for d in spec["disks"]] == ["/dev/vg0/a-disk.drift", "/dev/vg0/a-swap"]
    assert fp.call_count(["lvremove", "--yes", "vg0/a-disk.drift"]) == 2  # the stale one, then ours
    assert not where.exists()


def test_mount_tree_ro_mounts_read_only_and_never_through_a_guest_symlink(fp, tmp_path):
    from si_xen.storage import backend
    from si_xen.storage.mount import mount_tree_ro

    root = tmp_path / "root"
    (root / "srv").mkdir(parents=True)
    os.symlink("/etc", root / "var")  # the guest's /var leads out: never mounted on
    disks = [DiskRecord("xvda3", "/var", "xfs", "1G", "/d/var.img"), DiskRecord("xvda2", "/", "ext4", "1G", "/d/disk.img"),
             DiskRecord("xvda4", "/srv", "xfs", "1G", "/d/srv.img"), DiskRecord("xvda1", "", "swap", "1G", "/d/swap.img")]
    fp.register(["mount", "-o", "ro,noload,errors=remount-ro,nosuid,nodev,noexec,loop", "-t", "ext4", "/d/disk.img", str(root)])
    fp.register(["mount", "-o", "ro,norecovery,nouuid,nosuid,nodev,noexec,loop", "-t", "xfs", "/d/srv.img", str(root / "srv")])
    mounted, skipped = mount_tree_ro(disks, backend("dir", "/d"), str(root))
    assert mounted == [str(root), str(root / "srv")] and skipped == ["/var"]
    assert len(fp.calls) == 2


def test_a_server_image_is_its_cached_current_never_pulled(tmp_path):
    d = tmp_path / "cache" / "images" / "srv_873" / "debian12"
    (d / "gen-2").mkdir(parents=True)
    os.symlink("gen-2", d / "current")
    paths = {"cache_dir": str(tmp_path / "cache"), "lock_dir": str(tmp_path / "lock")}
    rec = VmRecord("a", "debian12", source={"server": "srv", "overrides": []})
    assert drift.open_image(rec, paths) == str(d / "gen-2")
    (d / "view-2-abc").mkdir()
    with_overrides = VmRecord("a", "debian12", source={"server": "srv", "overrides": ["web"]})
    assert drift.open_image(with_overrides, paths) == str(d / "view-2-abc")
    from si_xen.errors import Fatal

    os.unlink(d / "current")
    with pytest.raises(Fatal, match="not in this host's cache"):
        drift.open_image(rec, paths)


@pytest.mark.parametrize("running,reflinks,dirty,says,never", [
    (set(), True, True, "not shut down cleanly (/ (ext4)): read from a copy of its disks with its journal replayed",
     "runs"),
    (set(), False, True, "not shut down cleanly (/ (ext4)) and its disks cannot be copied: read as they are", "runs"),
    ({"a"}, False, False, "the VM runs and its disks cannot be copied", "shut down"),
    (set(), True, False, None, "runs")])
def test_the_note_says_why_a_vm_was_read_as_it_was(world, monkeypatch, running, reflinks, dirty, says, never):
    """A stopped VM with a dirty journal is read as a running one is (a replayed copy): its note
    says it was not shut down cleanly, never that it runs."""
    from si_xen.storage import reflink

    monkeypatch.setattr(reflink, "reflinks_work", lambda d: reflinks)
    monkeypatch.setattr(vmread, "unclean", lambda rec: ["/ (ext4)"] if dirty else [])
    (out,) = drift.drift([state("a", world.fp)], world.settings, running)
    notes = " ".join(out.notes)
    assert out.state == ("running" if running else "stopped")
    assert (says in notes) if says else not out.notes, out.notes
    assert never not in notes
    assert world.read == [("a", out.read)] and out.read == ("offline" if not (dirty or running) else
                                                            "copy" if reflinks else "live")
