"""si_mkxenvm --rebuild without processes: the journal's ``replaces`` and its restore, made.Aside
and CarryDir, carry.save on a fake tree, the discard, and each refusal as one FATAL."""

import json
import os
import stat
from types import SimpleNamespace

import pytest

from si_xen import carry, journal, rebuild, service
from si_xen.cli import mkxenvm
from si_xen.errors import Fatal
from si_xen.made import Aside, CarryDir, Directory, DiskFile, File
from si_xen.record import VmRecord
from si_xen.report import Reporter
from si_xen.request import Request


@pytest.fixture
def losetup(fp):
    fp.register(["losetup", fp.any()], occurrences=100)
    return fp


def touch(path, text="x") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return str(path)


def deployed(tmp_path, request=None) -> tuple[str, dict]:
    """A VM as a deploy leaves it: a directory, its disk, config and autostart link, recorded."""
    s = str(tmp_path / "state")
    d = str(tmp_path / "vms" / "domains" / "vm")
    p = {"dir": d, "disk": touch(f"{d}/disk.img", "old disk"), "cfg": touch(tmp_path / "xen" / "vm.cfg", "old cfg"),
         "link": str(tmp_path / "xen" / "auto" / "vm.cfg")}
    os.makedirs(os.path.dirname(p["link"]))
    os.symlink(p["cfg"], p["link"])
    j = journal.Journal(s, "vm", VmRecord.from_json({"name": "vm", "pid": 1}))
    j.step("disks")
    for t in (Directory(d), DiskFile(p["disk"]), File(p["cfg"]), File(p["link"])):
        j.made(t)
    j.finish(VmRecord("vm", "deb", image_fingerprint="aa", config=p["cfg"],
                      request={"hostnames": ["vm"]} if request is None else request))
    j.close()
    return s, p


def lines(s: str) -> list[dict]:
    return [json.loads(x) for x in open(journal.path_of(s, "vm")) if not x.startswith('{"step"')]


def set_aside(j, path):
    from si_xen.made import _rename

    return j.made(Aside(path, Aside.name_for(path)), _rename, path, Aside.name_for(path))


def test_replacing_keeps_the_old_journal_inside_the_new(tmp_path):
    s, p = deployed(tmp_path)
    old = journal.load(s, "vm")
    j = journal.Journal.replacing(s, "vm", VmRecord.from_json({"name": "vm", "pid": 2}), old, keep_old=True)
    j.step("carry")
    j.made(CarryDir(str(tmp_path / "carry")))
    j.close()
    st = journal.load(s, "vm")
    assert not st.complete and st.step == "carry" and st.things == [CarryDir(str(tmp_path / "carry"))]
    assert st.replaced_things == old.things and st.replaces["keep_old"] is True
    assert VmRecord.from_json(st.replaces["record"]) == old.record
    assert not os.path.exists(journal.path_of(s, "vm") + ".new")


def test_rollback_moves_the_old_things_back_and_restores_the_journal(tmp_path, losetup):
    s, p = deployed(tmp_path)
    before = lines(s)
    j = journal.Journal.replacing(s, "vm", VmRecord.from_json({"name": "vm", "pid": 2}), journal.load(s, "vm"))
    for path in (p["disk"], p["cfg"], p["link"]):
        set_aside(j, path)
    j.made(DiskFile(p["disk"]), touch, p["disk"], "new disk")
    j.made(File(p["cfg"]), touch, p["cfg"], "new cfg")
    assert j.rollback() == []
    assert open(p["disk"]).read() == "old disk" and open(p["cfg"]).read() == "old cfg"
    assert os.readlink(p["link"]) == p["cfg"]
    assert sorted(os.listdir(p["dir"])) == ["disk.img"] and ".vm.cfg.si-old" not in os.listdir(os.path.dirname(p["link"]))
    assert lines(s) == before, "the journal is the replaced one again"


def test_rm_of_an_unfinished_rebuild_removes_new_and_old(tmp_path, losetup):
    s, p = deployed(tmp_path)
    j = journal.Journal.replacing(s, "vm", VmRecord.from_json({"name": "vm", "pid": 2}), journal.load(s, "vm"))
    set_aside(j, p["disk"])
    j.made(DiskFile(p["disk"]), touch, p["disk"], "new disk")
    j.close()
    journal.remove(journal.load(s, "vm"))
    assert not os.path.exists(p["dir"]) and not os.path.exists(p["cfg"]) and not os.path.lexists(p["link"])
    assert not os.path.exists(journal.path_of(s, "vm"))


def test_aside_moves_back_only_where_the_path_is_free(tmp_path, losetup):
    a = Aside(touch(tmp_path / "f"), str(tmp_path / "f.si-old"))
    os.rename(a.path, a.aside)
    a.delete()
    assert os.path.exists(a.path) and not os.path.exists(a.aside), "free: moved back"
    os.rename(a.path, a.aside)
    touch(a.path, "new")
    a.delete()
    assert open(a.path).read() == "new" and not os.path.exists(a.aside), "taken: the aside goes"
    a.delete()  # neither there: nothing to do
    assert Aside.name_for("/etc/xen/auto/vm.cfg") == "/etc/xen/auto/.vm.cfg.si-old", "xendomains skips dot files"
    assert Aside.name_for("/srv/d/disk.img") == "/srv/d/disk.img.si-old"
    assert Aside.name_for("/dev/vg/vm-disk") == "/dev/vg/vm-disk.si-old"


def test_carry_dir_goes_whole(tmp_path):
    d = tmp_path / "c"
    touch(d / "etc/ssh/k")
    CarryDir(str(d)).delete()
    CarryDir(str(d)).delete()
    assert not d.exists()


def test_carry_save_copies_keys_machine_ids_bytes_and_modes_never_a_link(tmp_path):
    root, dest = tmp_path / "root", tmp_path / "dest"
    touch(root / "etc/ssh/sshd_config", "HostKey /etc/ssh/keys/host_ed25519\n")
    for name, mode in (("ssh_host_rsa_key", 0o600), ("ssh_host_rsa_key.pub", 0o644)):
        touch(root / "etc/ssh" / name, f"{name}\x00\xff")
        os.chmod(root / "etc/ssh" / name, mode)
    touch(root / "etc/ssh/keys/host_ed25519", "custom")
    touch(root / "etc/ssh/keys/host_ed25519.pub", "custom pub")
    os.symlink("/etc/shadow", root / "etc/ssh/ssh_host_ecdsa_key")  # a link out of the guest: never read
    touch(root / "etc/machine-id", "abc\n")
    os.makedirs(root / "var/lib/dbus")
    os.symlink("/etc/machine-id", root / "var/lib/dbus/machine-id")  # the usual link: not carried
    dest.mkdir()
    got = carry.save(str(root), str(dest))
    assert got == ["etc/machine-id", "etc/ssh/keys/host_ed25519", "etc/ssh/keys/host_ed25519.pub",
                   "etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_rsa_key.pub"]
    assert (dest / "etc/ssh/ssh_host_rsa_key").read_bytes() == (root / "etc/ssh/ssh_host_rsa_key").read_bytes()
    assert stat.S_IMODE(os.stat(dest / "etc/ssh/ssh_host_rsa_key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(dest / "etc/ssh/ssh_host_rsa_key.pub").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(dest / "etc/ssh").st_mode) == 0o700
    os.chown(root / "etc/ssh/ssh_host_rsa_key", 0, 998)  # RHEL's root:ssh_keys, by number
    (tmp_path / "d1").mkdir()
    carry.save(str(root), str(tmp_path / "d1"))
    assert os.stat(tmp_path / "d1/etc/ssh/ssh_host_rsa_key").st_gid == 998
    assert os.stat(tmp_path / "d1/etc/ssh/ssh_host_rsa_key.pub").st_gid == os.stat(root / "etc/ssh/ssh_host_rsa_key.pub").st_gid
    os.unlink(root / "var/lib/dbus/machine-id")
    touch(root / "var/lib/dbus/machine-id", "abc\n")  # a file of its own: carried
    (tmp_path / "d2").mkdir()
    assert "var/lib/dbus/machine-id" in carry.save(str(root), str(tmp_path / "d2"))


@pytest.mark.parametrize("keep_old", [False, True])
def test_discard_after_the_record(tmp_path, losetup, keep_old):
    s, p = deployed(tmp_path)
    j = journal.Journal.replacing(s, "vm", VmRecord.from_json({"name": "vm", "pid": 2}), journal.load(s, "vm"), keep_old)
    cd = str(tmp_path / "state/carry/vm")
    j.made(CarryDir(cd), os.makedirs, cd)
    for path in (p["disk"], p["cfg"], p["link"]):
        set_aside(j, path)
    j.made(DiskFile(p["disk"]), touch, p["disk"], "new disk")
    j.made(File(p["cfg"]), touch, p["cfg"], "new cfg")
    j.finish(VmRecord("vm", "deb", image_fingerprint="bb", rebuilt="now"))
    j.close()
    rec = rebuild.discard(s, journal.load(s, "vm"))
    st = journal.load(s, "vm")
    assert st.complete and st.replaces is None and st.record.image_fingerprint == "bb" and st.record.rebuilt == "now"
    assert not os.path.exists(cd) and not os.path.lexists(Aside.name_for(p["link"]))
    assert not os.path.exists(Aside.name_for(p["cfg"]))
    assert os.path.exists(f"{p['disk']}.si-old") == keep_old
    kept = [DiskFile(f"{p['disk']}.si-old")] if keep_old else []
    assert st.things == [Directory(p["dir"]), DiskFile(p["disk"]), File(p["cfg"]), *kept]
    assert rec.extra.get("old_disks", []) == [k.path for k in kept]


def settings(tmp_path, s):
    return SimpleNamespace(paths={"state_dir": s, "lock_dir": str(tmp_path / "lock"), "log_dir": str(tmp_path / "log")})


def fatal(fn, *a, **kw) -> str:
    with pytest.raises(Fatal) as e:
        fn(*a, **kw)
    return str(e.value)


def test_refusals_are_one_fatal_each(tmp_path):
    s, p = deployed(tmp_path, request={})
    cfg, rep = settings(tmp_path, s), Reporter(quiet=True)
    assert "no VM 'nosuch' made by si_mkxenvm" in fatal(service.rebuildable, None, "nosuch", cfg, rep)
    said = fatal(service.rebuildable, journal.load(s, "vm"), "vm", cfg, rep)
    assert "made by si-xen < 0.2" in said and "--hostname vm" in said and "--mac" in said
    j = journal.Journal.resume(s, "vm", {"pid": 9, "from": "aa", "to": "bb"})
    j.step("transfer")
    j.close()
    said = fatal(service.rebuildable, journal.load(s, "vm"), "vm", cfg, rep)
    assert "unfinished update" in said and "si_updatexenvm vm" in said
    j = journal.Journal(s, "vm", VmRecord.from_json({"name": "vm", "pid": 3}))
    j.step("disks")
    j.close()
    said = fatal(service.rebuildable, journal.load(s, "vm"), "vm", cfg, rep)
    assert "unfinished deploy" in said and "si_rmxenvm vm" in said


def test_a_running_vm_needs_restart(tmp_path, monkeypatch):
    s, p = deployed(tmp_path)
    os.makedirs(tmp_path / "lock")
    monkeypatch.setattr(service, "running", lambda name, choice="auto": True)
    hs = SimpleNamespace(walk=None)
    said = fatal(service.rebuild_vm, "vm", {}, None, settings(tmp_path, s), Reporter(quiet=True), hs, None)
    assert "VM 'vm' is running" in said and "--restart" in said
    assert lines(s)[-1]["record"]["image_fingerprint"] == "aa", "nothing changed"


def test_an_unfinished_rebuild_is_rolled_back_first(tmp_path, losetup):
    s, p = deployed(tmp_path)
    j = journal.Journal.replacing(s, "vm", VmRecord.from_json({"name": "vm", "pid": 2}), journal.load(s, "vm"))
    set_aside(j, p["disk"])
    j.close()
    st = service.rebuildable(journal.load(s, "vm"), "vm", settings(tmp_path, s), Reporter(quiet=True))
    assert st.complete and st.replaces is None and open(p["disk"]).read() == "old disk"


def test_cli_overrides_replace_what_they_contradict():
    args = mkxenvm.build_parser().parse_args(["--rebuild", "vm", "--dir", "/srv", "--dhcp", "--memory", "1G"])
    o = mkxenvm.overrides(args)
    assert o["dir"] == "/srv" and o["lvm"] is None and o["ip"] == () and o["memory"] == "1G"
    assert "size_given" not in o and "rebuild" not in o and "keep_old" not in o
    recorded = Request.from_options({"hostname": "vm", "lvm": "vg0", "ip": ["10.0.0.5"], "netmask": "24",
                                     "mac": "00:16:3e:00:00:01", "output": "/tmp"}).to_json()
    req = Request.from_json(recorded, o)
    assert req.storage.kind == "dir" and req.storage.root == "/srv" and req.dhcp and req.ips == ()
    assert req.memory == 1024 and req.mac == "00:16:3e:00:00:01", "what is not said stays the record's"
    assert Request.from_json(recorded) == Request.from_json(recorded, {})


def test_an_update_waits_for_a_rebuild_to_be_tidied(tmp_path, losetup):
    s, p = deployed(tmp_path)
    j = journal.Journal.replacing(s, "vm", VmRecord.from_json({"name": "vm", "pid": 2}), journal.load(s, "vm"))
    set_aside(j, p["disk"])
    j.finish(VmRecord("vm", "deb", image_fingerprint="bb"))
    j.close()
    assert "si_mkxenvm --rebuild vm" in fatal(journal.Journal.resume, s, "vm", {"pid": 3})


class FakeTs:
    name = "xl"

    def __init__(self, stops: bool):
        self.stops, self.calls = stops, []

    def stop(self, name, timeout):
        self.calls.append(("stop", name, timeout))
        return self.stops

    def destroy(self, name):
        self.calls.append(("destroy", name))

    def stop_shown(self, name):
        return f"xl shutdown -w {name}"


@pytest.mark.parametrize("stops", [True, False])
def test_restart_stops_cleanly_and_never_destroys(monkeypatch, stops):
    ts = FakeTs(stops)
    monkeypatch.setattr(rebuild.toolstack, "require_running", lambda choice: ts)
    c = SimpleNamespace(old=SimpleNamespace(record=VmRecord("vm", toolstack="xl")), plan=SimpleNamespace(hostname="vm"),
                        timeout=7.0, rep=Reporter(quiet=True))
    if stops:
        rebuild._stop(c)
    else:
        said = fatal(rebuild._stop, c)
        assert "did not shut down within 7 s (its shutdown was asked for; it was never destroyed)" in said
    assert ts.calls == [("stop", "vm", 7.0)]


def test_an_lv_aside_is_renamed_back_with_lvrename_or_removed(fp):
    a = Aside("/dev/vg0/vm-disk", "/dev/vg0/vm-disk.si-old")
    fp.register(["lvs", "/dev/vg0/vm-disk.si-old"])
    fp.register(["lvs", "/dev/vg0/vm-disk"], returncode=5)
    fp.register(["lvrename", "/dev/vg0/vm-disk.si-old", "/dev/vg0/vm-disk"])
    a.delete()
    fp.register(["lvs", "/dev/vg0/vm-disk.si-old"])
    fp.register(["lvs", "/dev/vg0/vm-disk"])
    fp.register(["lvs", "/dev/vg0/vm-disk.si-old"])
    fp.register(["lvremove", "-f", "/dev/vg0/vm-disk.si-old"])
    a.delete()  # the new LV took the name: the old one goes
    assert [c[0] for c in fp.calls].count("lvrename") == 1 and ["lvremove", "-f", "/dev/vg0/vm-disk.si-old"] in [
        list(c) for c in fp.calls]


def test_rm_keep_disks_of_an_unfinished_rebuild_keeps_old_and_new_disks(tmp_path, losetup):
    s, p = deployed(tmp_path)
    j = journal.Journal.replacing(s, "vm", VmRecord.from_json({"name": "vm", "pid": 2}), journal.load(s, "vm"))
    from si_xen.made import _rename

    j.made(Aside(p["disk"], p["disk"] + ".si-old", True), _rename, p["disk"], p["disk"] + ".si-old")
    set_aside(j, p["cfg"])
    j.made(DiskFile(p["disk"]), touch, p["disk"], "new disk")
    j.close()
    journal.remove(journal.load(s, "vm"), keep_disks=True)
    assert open(p["disk"]).read() == "new disk" and open(p["disk"] + ".si-old").read() == "old disk"
    assert not os.path.exists(p["cfg"]) and not os.path.exists(Aside.name_for(p["cfg"]))
    assert Aside.from_json(Aside("/a", "/b", True).to_json()).disk and not Aside("/a", "/b").disk
