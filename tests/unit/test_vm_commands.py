"""si_lsxenvm and si_rmxenvm read the journal: finished VMs, unfinished deploys, busy ones."""

import json
import os
import time

import pytest

from si_xen import journal, populate, prune
from si_xen.cli import lsxenvm, rmxenvm
from si_xen.errors import Fatal
from si_xen.made import Directory, DiskFile, File
from si_xen.plan import Disk
from si_xen.record import VmRecord


@pytest.fixture
def paths(tmp_path, monkeypatch):
    state, lock = tmp_path / "state", tmp_path / "lock"
    conf = tmp_path / "xen.conf"
    conf.write_text(f"[paths]\nstate_dir = {state}\nlog_dir = {tmp_path}/log\nlock_dir = {lock}\n")
    monkeypatch.setenv("SI_XEN_CONFIG", str(conf))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    return tmp_path


def crashed(paths, name="vm1", step="copy"):
    """What a deploy killed in ``step`` leaves: a directory, a disk, no config yet."""
    vm_dir = paths / "domains" / name
    vm_dir.mkdir(parents=True)
    (vm_dir / "disk.img").write_text("half a copy")
    j = journal.Journal(str(paths / "state"), name,
                        VmRecord.from_json({"name": name, "pid": 999999, "image": "deb", "config": f"/etc/xen/{name}.cfg"}))
    j.step("disks")
    j.made(Directory(str(vm_dir)))
    j.made(DiskFile(str(vm_dir / "disk.img")))
    j.step(step)
    j.close()
    return vm_dir


def test_ls_shows_finished_and_unfinished(paths, capsys, fp):
    crashed(paths)
    j = journal.Journal(str(paths / "state"), "web1", VmRecord.from_json({"name": "web1", "pid": 1}))
    j.finish(VmRecord.from_json({"name": "web1", "image": "deb", "boot": "direct", "config": "/etc/xen/web1.cfg",
              "disks": [{"vdev": "xvda2", "mountpoint": "/", "size": "2G"}], "bases": []}))
    j.close()
    assert lsxenvm.body(["--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["web1"]["complete"] and rows["web1"]["state"] == "unknown"
    assert rows["vm1"]["state"] == "incomplete" and rows["vm1"]["step"] == "copy"
    assert lsxenvm.body([]) == 0
    out = capsys.readouterr().out
    assert "unfinished deploy (pid 999999) stopped in step 'copy': si_rmxenvm vm1 removes what it made" in out


def test_rm_removes_what_an_unfinished_deploy_made(paths, capsys, fp):
    vm_dir = crashed(paths)
    fp.register(["losetup", "--noheadings", "-O", "NAME", "-j", str(vm_dir / "disk.img")])
    assert rmxenvm.body(["--yes", "vm1"]) == 0
    assert "Removed VM 'vm1' (an unfinished deploy)." in capsys.readouterr().out
    assert not vm_dir.exists() and journal.load(str(paths / "state"), "vm1") is None


def test_rm_keeps_the_journal_when_a_delete_fails(paths, fp):
    vm_dir = crashed(paths)
    fp.register(["losetup", fp.any()], returncode=2, stderr="losetup: cannot list loop devices\n")
    with pytest.raises(Fatal, match="could not remove all of VM 'vm1': disk-file .*losetup exited 2.*journal .* is kept"):
        rmxenvm.body(["--yes", "vm1"])
    assert (vm_dir / "disk.img").exists() and journal.load(str(paths / "state"), "vm1") is not None


def test_rm_refuses_while_another_command_holds_the_vm(paths, fp):
    crashed(paths)
    from si_xen.locks import exclusive

    with exclusive(str(paths / "lock" / "vm1.lock")):
        with pytest.raises(Fatal, match=rf"another si_\* command \(pid {os.getpid()}\) is working on VM 'vm1'"):
            rmxenvm.body(["--yes", "vm1"])


def test_rm_of_an_unknown_vm(paths):
    with pytest.raises(Fatal, match="no VM 'nope' made by si_mkxenvm"):
        rmxenvm.body(["--yes", "nope"])


class FakeBackend:
    def __init__(self):
        self.calls = []

    def create(self, disk, j):
        self.calls.append(("create", disk.name))
        j.made(File(disk.target))

    def clone(self, base, disk, j):
        self.calls.append(("clone", disk.name, base))
        j.made(File(disk.target))


class QuietRep:
    def step(self, what):
        from contextlib import nullcontext

        return nullcontext()


def test_make_disks_creates_or_clones_and_gives_swap_its_signature(tmp_path, fp):
    disks = (Disk("disk", "/", "ext4", 2048, "", "xvda2", "/v/disk.img"), Disk("swap", "", "swap", 128, "", "xvda1", "/v/swap.img"))
    plan = type("P", (), {"disks": disks})()
    j = journal.Journal(str(tmp_path), "vm", VmRecord.from_json({"name": "vm"}))
    fp.register(["mkswap", "/v/swap.img"], occurrences=2)
    b = FakeBackend()
    populate.make_disks(plan, b, QuietRep(), j)
    populate.make_disks(plan, b, QuietRep(), j, bases={"disk": "/b/base.img"})
    assert b.calls == [("create", "swap"), ("create", "disk"), ("create", "swap"), ("clone", "disk", "/b/base.img")]
    assert [t.path for t in j.state.things] == ["/v/swap.img", "/v/disk.img"] * 2


GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "bf63863")


def bf63863_vms(paths):
    """The journals bf63863's si_mkxenvm wrote (golden/bf63863: a VM made, and one killed in its fixups
    step with SI_XEN_KILL_AT=fixups), its paths moved under ``paths``, with what they name made again."""
    vms = paths / "state" / "vms"
    vms.mkdir(parents=True)
    for name in ("bfvm", "bfcrash"):
        with open(os.path.join(GOLDEN, f"{name}.journal")) as f:
            (vms / f"{name}.journal").write_text(f.read().replace("@ROOT@", str(paths)))
        (paths / "disks" / "domains" / name).mkdir(parents=True)
        for disk in ("swap.img", "disk.img"):
            (paths / "disks" / "domains" / name / disk).write_text("a disk")
    (paths / "xen").mkdir()
    (paths / "xen" / "bfvm.cfg").write_text('name = "bfvm"\n')
    for f in ("vmlinuz", "initrd.img"):
        (paths / "disks" / "domains" / "bfvm" / f).write_text("boot file")
    (paths / "run" / "si-xen.bfcrash.a35b0e19").mkdir(parents=True)


def test_a_vm_made_by_bf63863_is_listed_and_removed(paths, capsys, fp):
    """Journals written before the typed record (main at bf63863) read back whole: si_lsxenvm lists
    both VMs as they were made, si_rmxenvm removes everything each names, newest first."""
    bf63863_vms(paths)
    assert lsxenvm.body(["--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    vm, crash = rows["bfvm"], rows["bfcrash"]
    assert vm["complete"] and vm["boot"] == "direct" and vm["ips"] == ["dhcp"] and vm["image_fingerprint"] == ""
    assert [(d["vdev"], d["mountpoint"], d["size"]) for d in vm["disks"]] == [("xvda1", "", "128M"), ("xvda2", "/", "2G")]
    assert len(vm["ssh_fingerprints"]) == 3 and vm["guest"] == "Debian GNU/Linux 12 (bookworm)"
    assert crash["state"] == "incomplete" and crash["step"] == "fixups" and crash["pid"] == 2238
    assert lsxenvm.body([]) == 0
    out = capsys.readouterr().out
    assert "bfvm                 debian12           unknown  direct   xvda1:swap:128M, xvda2:/:2G" in out
    assert "unfinished deploy (pid 2238) stopped in step 'fixups': si_rmxenvm bfcrash removes what it made" in out

    fp.register(["losetup", fp.any()], occurrences=4)
    assert rmxenvm.body(["--yes", "bfcrash", "bfvm"]) == 0
    assert capsys.readouterr().out == "Removed VM 'bfcrash' (an unfinished deploy).\nRemoved VM 'bfvm'.\n"
    assert not (paths / "disks").exists() and not (paths / "xen" / "bfvm.cfg").exists()  # its dirs were its own
    assert not (paths / "run" / "si-xen.bfcrash.a35b0e19").exists()
    assert journal.all_states(str(paths / "state")) == []


def test_rm_drops_the_manifests_no_vm_is_at_and_keeps_the_others(paths, fp):
    from si_xen.image import survey

    state = paths / "state"
    facts = state / "images"
    facts.mkdir(parents=True)
    old = time.time() - prune.SPARE_MANIFESTS - 60
    for fpr in ("aaaa", "bbbb", "cccc", "dddd", "eeee"):
        (facts / f"manifest-{fpr}").write_bytes(b"x")
        if fpr != "eeee":  # eeee: saved a minute ago by a command under way
            os.utime(facts / f"manifest-{fpr}", (old, old))
    for name, fpr in (("web1", "aaaa"), ("web2", "bbbb")):
        j = journal.Journal(str(state), name, VmRecord.from_json({"name": name, "pid": 1}))
        j.finish(VmRecord.from_json({"name": name, "image": "deb", "image_fingerprint": fpr}))
        j.close()
    survey.remember(str(facts), "/images/deb", survey.Survey("cccc", ()))  # a deploy under way walked it
    assert rmxenvm.body(["--yes", "web2"]) == 0
    assert sorted(p.name for p in facts.glob("manifest-*")) == ["manifest-aaaa", "manifest-cccc", "manifest-eeee"]
