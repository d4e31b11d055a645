"""LVM storage's copy on write for an update: a thin LV gets a journaled thin snapshot and two
lvrenames put it in place; a thick LV (and a given disk) is updated in place (faked processes)."""

import os
from types import SimpleNamespace

from si_xen import journal, update
from si_xen.made import LogicalVolume, Swap
from si_xen.record import VmRecord
from si_xen.storage import GivenBackend, lvm

TARGET = "/dev/vg0/vm-disk"
NEW, OLD = f"{TARGET}.upd", f"{TARGET}.upd-old"


def _journal(d) -> journal.Journal:
    j = journal.Journal(str(d), "vm", VmRecord.from_json({"name": "vm"}))
    j.made(LogicalVolume(TARGET))
    j.finish(VmRecord("vm"))
    j.close()
    return journal.Journal.resume(str(d), "vm", {"from": "a", "to": "b"})


def _lv(fp, path, there):
    fp.register(["lvs", path], returncode=0 if there else 5)


def test_thin_lv_snapshot_is_journaled_first_then_made_and_activated(tmp_path, fp):
    j = _journal(tmp_path)
    fp.register(["lvs", "--noheadings", "-o", "pool_lv", TARGET], stdout="  pool0\n")
    _lv(fp, NEW, False)

    def made(process):  # the snapshot is in the journal before it exists
        assert journal.load(str(tmp_path), "vm").update_things == [LogicalVolume(NEW)]

    fp.register(["lvcreate", "--yes", "-s", "-kn", "-n", "vm-disk.upd", "vg0/vm-disk"], callback=made)
    fp.register(["lvchange", "-ay", "vg0/vm-disk.upd"])
    assert lvm.LvmBackend("vg0", "pool0").snapshot(TARGET, j) == NEW
    assert fp.call_count(["lvcreate", fp.any()]) == 1 and fp.call_count(["lvchange", fp.any()]) == 1


def test_a_dead_runs_snapshot_goes_first_and_a_rollback_removes_ours(tmp_path, fp):
    j = _journal(tmp_path)
    fp.register(["lvs", "--noheadings", "-o", "pool_lv", TARGET], stdout="  pool0\n")
    _lv(fp, NEW, True)
    _lv(fp, NEW, True)
    fp.register(["lvremove", "-f", NEW])
    fp.register(["lvcreate", fp.any()])
    fp.register(["lvchange", fp.any()])
    lvm.LvmBackend("vg0", "pool0").snapshot(TARGET, j)
    _lv(fp, NEW, True)
    fp.register(["lvremove", "-f", NEW])
    assert j.rollback() == [] and fp.call_count(["lvremove", "-f", NEW]) == 2
    assert journal.load(str(tmp_path), "vm").update is None


def test_thick_lv_is_updated_in_place(tmp_path, fp):
    j = _journal(tmp_path)
    fp.register(["lvs", "--noheadings", "-o", "pool_lv", TARGET], stdout="  \n")
    assert lvm.LvmBackend("vg0").snapshot(TARGET, j) is None
    assert fp.call_count(["lvcreate", fp.any()]) == 0 and j.state.update_things == []


def test_given_disks_are_updated_in_place(tmp_path):
    assert GivenBackend().snapshot("/dev/xenvg/inst1.disk0", _journal(tmp_path)) is None


def test_swap_journals_then_lvrenames_and_returns_the_old_lv(tmp_path, fp):
    j = _journal(tmp_path)
    _lv(fp, OLD, True)  # an earlier update's, never discarded
    _lv(fp, OLD, True)
    fp.register(["lvremove", "-f", OLD])

    def renamed(process):  # the Swap is in the journal before the first rename
        assert journal.load(str(tmp_path), "vm").update_things == [Swap(TARGET, NEW, OLD)]

    _lv(fp, TARGET, True)
    _lv(fp, NEW, True)
    _lv(fp, OLD, False)
    fp.register(["lvrename", TARGET, OLD], callback=renamed)
    _lv(fp, TARGET, False)
    _lv(fp, NEW, True)
    fp.register(["lvrename", NEW, TARGET])
    assert lvm.LvmBackend("vg0", "pool0").swap(TARGET, NEW, j) == OLD
    assert fp.call_count(["lvrename", fp.any()]) == 2 and fp.call_count(["lvremove", fp.any()]) == 1


def test_discard_removes_the_old_lv_not_just_its_dev_link(fp, tmp_path):
    _lv(fp, OLD, True)
    fp.register(["lvremove", "-f", OLD])
    f = tmp_path / "disk.img.upd-old"
    f.write_text("old")
    update._discard(SimpleNamespace(old_disks=[OLD, str(f)]))
    assert fp.call_count(["lvremove", "-f", OLD]) == 1 and not os.path.exists(f)
