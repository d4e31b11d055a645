"""The journal and the deploy's driver: written before things are made, replayed in reverse."""

import json
import os
from types import SimpleNamespace

import pytest

from si_xen import deploy, journal
from si_xen.errors import Fatal
from si_xen.locks import LockBusy, exclusive
from si_xen.made import Directory, DiskFile, File, Lock, LogicalVolume, Made, Mount


def test_round_trip_and_incomplete_until_the_record(tmp_path):
    j = journal.Journal(str(tmp_path), "vm1", {"pid": 4242, "image": "deb"})
    j.step("disks")
    j.made(DiskFile(str(tmp_path / "d.img")))
    j.made(LogicalVolume("/dev/vg0/vm1-disk"))
    st = journal.load(str(tmp_path), "vm1")
    assert not st.complete and st.step == "disks"
    assert st.things == [DiskFile(str(tmp_path / "d.img")), LogicalVolume("/dev/vg0/vm1-disk")]
    assert st.summary() == "pid 4242 stopped in step 'disks'; made: 1 disk-file, 1 lv"
    assert st.as_dict()["complete"] is False
    j.finish({"name": "vm1", "image": "deb"})
    j.close()
    st = journal.load(str(tmp_path), "vm1")
    assert st.complete and st.as_dict() == {"name": "vm1", "image": "deb", "complete": True}
    assert [s.name for s in journal.all_states(str(tmp_path))] == ["vm1"]


def test_a_torn_last_line_is_not_made_but_a_corrupt_middle_is_fatal(tmp_path):
    j = journal.Journal(str(tmp_path), "vm", {"pid": 1})
    j.made(File("/x"))
    j.close()
    with open(j.path, "a") as f:
        f.write('{"made": {"kind": "fi')  # the power went while this line was written
    assert journal.load(str(tmp_path), "vm").things == [File("/x")]
    with open(j.path, "a") as f:
        f.write('\n{"step": "copy"}\n')
    with pytest.raises(Fatal, match="corrupt at line 3"):
        journal.load(str(tmp_path), "vm")


def test_every_kind_survives_the_journal():
    for thing in (Directory("/d"), File("/f"), DiskFile("/i"), LogicalVolume("/dev/v/l"), Mount("/m", "/s"),
                  Lock("/l.lock")):
        assert Made.from_json(json.loads(json.dumps(thing.to_json()))) == thing


def test_rollback_is_newest_first_and_keeps_the_journal_when_something_stays(tmp_path):
    order = []

    class Boom(File):
        kind = "test-boom"

        def delete(self):
            order.append(self.path)
            raise OSError("stuck")

    class Noted(File):
        kind = "test-noted"

        def delete(self):
            order.append(self.path)

    j = journal.Journal(str(tmp_path), "vm", {})
    for t in (Noted("a"), Boom("b"), Noted("c")):
        j.made(t)
    failed = j.rollback()
    assert order == ["c", "b", "a"] and failed == ["test-boom b: stuck"]
    assert os.path.exists(j.path)  # for si_rmxenvm to try again
    order.clear()
    j2 = journal.Journal(str(tmp_path), "vm2", {})
    j2.made(Noted("x"))
    assert j2.rollback() == [] and not os.path.exists(j2.path)


def test_keep_disks_leaves_disks_only(tmp_path, fp):
    disk, cfg = tmp_path / "disk.img", tmp_path / "vm.cfg"
    disk.write_text("data")
    cfg.write_text("cfg")
    j = journal.Journal(str(tmp_path), "vm", {})
    j.made(DiskFile(str(disk)))
    j.made(File(str(cfg)))
    j.close()
    journal.remove(journal.load(str(tmp_path), "vm"), keep_disks=True)
    assert disk.exists() and not cfg.exists() and not os.path.exists(j.path)


def test_deletes_are_idempotent(tmp_path, fp):
    d = tmp_path / "d"
    d.mkdir()
    (d / "kept").write_text("")
    Directory(str(d)).delete()  # not empty (a kept disk): stays, no error
    Directory(str(tmp_path / "never")).delete()
    File(str(tmp_path / "never")).delete()
    DiskFile(str(tmp_path / "never.img")).delete()  # no file: no losetup either
    Mount(str(tmp_path / "not-mounted"), "/dev/x").delete()
    fp.register(["lvs", "/dev/vg0/gone"], returncode=5)
    LogicalVolume("/dev/vg0/gone").delete()
    assert d.exists() and [c[0] for c in fp.calls] == ["lvs"]


def test_a_disk_file_left_on_a_loop_device_is_detached_first(tmp_path, fp):
    img = tmp_path / "disk.img"
    img.write_text("")
    fp.register(["losetup", "--noheadings", "-O", "NAME", "-j", str(img)], stdout="/dev/loop7\n")
    fp.register(["losetup", "-d", "/dev/loop7"])
    DiskFile(str(img)).delete()
    assert not img.exists() and fp.call_count(["losetup", "-d", "/dev/loop7"]) == 1


def test_a_lock_is_removed_only_when_free(tmp_path):
    path = str(tmp_path / "locks" / "base.lock")
    with exclusive(path):
        with pytest.raises(LockBusy) as e:
            with exclusive(path, wait=False):
                pass
        assert e.value.pid == os.getpid()  # the holder says who it is
        Lock(path).delete()
        assert os.path.exists(path)  # someone holds it: theirs
    with open(path, "w") as f:
        f.write("999999\n")  # left by a holder that died: flock held nothing
    Lock(path).delete()
    assert not os.path.exists(path)


def _context_for(tmp_path):
    settings = SimpleNamespace(paths={"state_dir": str(tmp_path / "state"), "lock_dir": str(tmp_path / "locks"),
                                      "log_dir": str(tmp_path / "log"), "template_dir": str(tmp_path)})
    plan = SimpleNamespace(hostname="vm", image_name="deb", cfg_path=str(tmp_path / "vm.cfg"), storage="dir",
                           storage_root=str(tmp_path), thin_pool=None, clone=True, kernel=None, disks=(), force=False)
    return settings, plan


def test_the_driver_runs_steps_in_order_and_undoes_them_in_reverse(tmp_path, monkeypatch):
    made = [tmp_path / n for n in ("one", "two")]

    def make(i):
        def run(c):
            c.journal.made(File(str(made[i])), made[i].write_text, "x")
        return run

    def fail(c):
        raise OSError(5, "Input/output error")

    ran = []
    steps = (deploy.Step("first", make(0)), deploy.Step("skipped", lambda c: ran.append("skipped"), lambda c: False),
             deploy.Step("second", make(1)), deploy.Step("third", fail))
    monkeypatch.setattr(deploy, "STEPS", steps)
    monkeypatch.setattr(deploy, "backend_for", lambda plan, lock_dir: SimpleNamespace(kind="file"))
    monkeypatch.setattr(deploy.bases, "ready", lambda plan, backend: True)
    settings, plan = _context_for(tmp_path)
    rep = SimpleNamespace(end_progress=lambda: None, detail=lambda t: None, warn=lambda t: None, log_path="/l")
    with pytest.raises(Fatal, match=r"step 'third' failed: \[Errno 5\] Input/output error \(the log /l"):
        deploy.execute(plan, SimpleNamespace(path=str(tmp_path)), None, settings, rep)
    assert not ran and not any(p.exists() for p in made)
    assert journal.load(settings.paths["state_dir"], "vm") is None


def test_a_plain_rerun_after_a_crash_is_refused_with_the_way_out(tmp_path):
    settings, plan = _context_for(tmp_path)
    j = journal.Journal(settings.paths["state_dir"], "vm", {"pid": 31337})
    j.step("copy")
    j.made(DiskFile(str(tmp_path / "disk.img")))
    j.close()  # and then SIGKILL: the journal stays
    with pytest.raises(Fatal) as e:
        deploy.preflight(plan, settings, 0)
    assert str(e.value) == ("VM 'vm' has an unfinished deploy (pid 31337 stopped in step 'copy'; made: 1 disk-file) "
                            "(remove what it made with si_rmxenvm vm, then run this again)")


def test_a_deploy_still_running_is_told_apart_from_a_dead_one(tmp_path):
    settings, plan = _context_for(tmp_path)
    j = journal.Journal(settings.paths["state_dir"], "vm", {"pid": 1})  # pid 1 lives, as a deployer would
    j.close()
    os.makedirs(settings.paths["lock_dir"])
    with open(os.path.join(settings.paths["lock_dir"], "vm.lock"), "w") as f:
        f.write("1\n")
    with pytest.raises(Fatal, match="is being deployed by pid 1"):
        deploy.preflight(plan, settings, 0)
    os.unlink(os.path.join(settings.paths["lock_dir"], "vm.lock"))  # its holder died: the lock went with it
    with pytest.raises(Fatal, match="has an unfinished deploy"):
        deploy.preflight(plan, settings, 0)
