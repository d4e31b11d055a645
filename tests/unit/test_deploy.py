"""The deploy: its step driver (steps in order, undone in reverse), the refusals before it starts
(an unfinished or running deploy of the same VM), and the steps that guard a plan made from the
image's last walk (no base built from it; the VM kept only if the new walk agrees)."""

import os
from types import SimpleNamespace

import pytest

from si_xen import bases, deploy, journal, planner, service
from si_xen.errors import Fatal
from si_xen.image import open_image
from si_xen.image.survey import survey
from si_xen.made import DiskFile, File
from si_xen.record import VmRecord
from si_xen.request import Request
from si_xen.storage import FileBackend

from . import fakeimage
from .test_planner import opts


@pytest.fixture
def image(tmp_path):
    return open_image(fakeimage.make(tmp_path / "images" / "deb", unpacked_mib=16))


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
    j = journal.Journal(settings.paths["state_dir"], "vm", VmRecord.from_json({"name": "vm", "pid": 31337}))
    j.step("copy")
    j.made(DiskFile(str(tmp_path / "disk.img")))
    j.close()  # and then SIGKILL: the journal stays
    with pytest.raises(Fatal) as e:
        service.preflight(plan, settings, 0)
    assert str(e.value) == ("VM 'vm' has an unfinished deploy (pid 31337 stopped in step 'copy'; made: 1 disk-file) "
                            "(remove what it made with si_rmxenvm vm, then run this again)")


def test_a_deploy_still_running_is_told_apart_from_a_dead_one(tmp_path):
    settings, plan = _context_for(tmp_path)
    j = journal.Journal(settings.paths["state_dir"], "vm", VmRecord.from_json({"name": "vm", "pid": 1}))  # pid 1 lives, as a deployer would
    j.close()
    os.makedirs(settings.paths["lock_dir"])
    with open(os.path.join(settings.paths["lock_dir"], "vm.lock"), "w") as f:
        f.write("1\n")
    with pytest.raises(Fatal, match="is being deployed by pid 1"):
        service.preflight(plan, settings, 0)
    os.unlink(os.path.join(settings.paths["lock_dir"], "vm.lock"))  # its holder died: the lock went with it
    with pytest.raises(Fatal, match="has an unfinished deploy"):
        service.preflight(plan, settings, 0)


def test_an_unproven_plan_never_builds_a_base(tmp_path, image):
    """A plan from the image's last walk (its fingerprint not yet proven) clones a base that is
    there but never builds a missing one: nothing of a base is written, and the deploy is
    planned again from the new walk."""

    class Walk:
        def result(self):
            return "fresh survey"

    plan = planner.make_plan(Request.from_options(opts(tmp_path)), image, survey(image.path))
    backend, said = FileBackend(plan.storage_root), []
    j = journal.Journal(str(tmp_path / "state"), plan.hostname, VmRecord.from_json({"name": plan.hostname, "pid": os.getpid()}))
    c = deploy.Context(plan, image, None, None, SimpleNamespace(say=said.append), j, confirm=Walk(), backend=backend)
    with pytest.raises(deploy.ImageChanged, match="base disk was removed") as e:
        deploy._bases(c)
    assert e.value.survey == "fresh survey"
    assert not said and [n for n in os.listdir(tmp_path / "bases") if not n.endswith(".lock")] == []
    (disk,) = [d for d in plan.disks if d.fs != "swap"]
    base = backend.base_target(bases.name(plan.image_name, plan.fingerprint, disk))
    (tmp_path / "built").write_text("a base disk")
    backend.publish_base(str(tmp_path / "built"), base, {"fingerprint": plan.fingerprint})
    deploy._bases(c)  # a base built by a proven deploy: cloned from
    assert c.bases == {disk.name: base} and not said
    j.close()


def test_confirm_keeps_a_vm_only_when_the_new_walk_agrees(tmp_path, image):
    s = survey(image.path)
    plan = SimpleNamespace(fingerprint=s.fingerprint)
    for fresh, kept in ((s, True), (SimpleNamespace(fingerprint="0" * 16), False), (None, False)):
        c = deploy.Context(plan, None, None, None, None, None, confirm=SimpleNamespace(result=lambda f=fresh: f))
        if kept:
            deploy._confirm(c)
        else:
            with pytest.raises(deploy.ImageChanged, match="image changed since its last walk"):
                deploy._confirm(c)


def test_a_batch_vm_records_its_own_part_of_the_request(tmp_path):
    req = Request.from_options(opts(tmp_path, hostname="web[01-03]", ip="10.0.0.5", netmask="255.255.255.0", dhcp=None))
    c = SimpleNamespace(request=req, plan=SimpleNamespace(hostname="web02", image_name="deb",
                                                          net=SimpleNamespace(mac="00:16:3e:aa:bb:cc")))
    d = deploy._request(c)
    assert (d["hostnames"], d["ips"], d["mac"], d["netmask"]) == (["web02"], ["10.0.0.6"], "00:16:3e:aa:bb:cc",
                                                                  "255.255.255.0")
    assert Request.from_json(d).hostnames == ("web02",) and d["image"] == "deb"
    assert deploy._request(SimpleNamespace(request=None)) == {}


def test_the_boot_step_and_unmount_record_what_si_xen_wrote(tmp_path, image, monkeypatch):
    plan = SimpleNamespace(boot="pygrub", kernel=None, disks=(), root=SimpleNamespace(vdev="xvda2"), hostname="vm1")
    c = SimpleNamespace(plan=plan, root=image.path, kernel=deploy.boot.find_kernel(image.guest), image=image,
                        owned={"hostname": ("/etc/hostname", "/var/lib/gone")}, mounts=[], owned_facts={})
    deploy._boot(c)
    assert c.owned["boot"] == ("/boot/grub", "/boot/grub/grub.cfg"), "the directory it made too"
    from si_xen.storage import mount

    monkeypatch.setattr(mount, "unmount", lambda mounts: None)
    monkeypatch.setattr(mount, "sync_targets", lambda disks: None)
    c.rep = SimpleNamespace(step=lambda what: open(os.devnull))  # any context manager
    deploy._unmount(c)
    st = os.lstat(os.path.join(image.path, "boot/grub/grub.cfg"))
    assert c.owned_facts["/boot/grub/grub.cfg"] == [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns]
    assert c.owned_facts["/var/lib/gone"] is None and "/etc/hostname" in c.owned_facts


def _update_context(tmp_path):
    """A complete VM's journal resumed by an update, in a Context the driver runs on."""
    s = str(tmp_path / "state")
    j = journal.Journal(s, "vm", VmRecord.from_json({"name": "vm"}))
    j.made(File(str(tmp_path / "vm.cfg")), (tmp_path / "vm.cfg").write_text, "cfg")
    j.finish(VmRecord("vm", image_fingerprint="aa"))
    j.close()
    rep = SimpleNamespace(end_progress=lambda: None, detail=lambda t: None, warn=lambda t: None, log_path="/l")
    c = deploy.Context(SimpleNamespace(hostname="vm"), None, None, None, rep,
                       journal.Journal.resume(s, "vm", {"from": "aa", "to": "bb"}),
                       hs=SimpleNamespace(tick=lambda: None, settle=lambda: None))
    return s, c


def test_run_steps_drives_an_updates_steps_and_undoes_only_what_they_made(tmp_path, fp):
    fp.register(["losetup", fp.any()], occurrences=5)
    s, c = _update_context(tmp_path)
    copy = tmp_path / "disk.img.upd"

    def fail(c):
        raise OSError(28, "No space left on device")

    steps = (deploy.Step("snapshot", lambda c: c.journal.made(DiskFile(str(copy)), copy.write_text, "x")),
             deploy.Step("transfer", fail))
    with pytest.raises(Fatal, match=r"step 'transfer' failed: \[Errno 28\]"):
        deploy.run_steps(c, steps)
    st = journal.load(s, "vm")
    assert not copy.exists() and (tmp_path / "vm.cfg").exists()
    assert st.complete and st.update is None and st.record.image_fingerprint == "aa"


def test_run_steps_is_true_when_all_ran(tmp_path):
    s, c = _update_context(tmp_path)
    assert deploy.run_steps(c, (deploy.Step("plan", lambda c: None), deploy.Step("start", lambda c: None)))
    c.journal.close()
    assert journal.load(s, "vm").update_steps == ["plan", "start"]
