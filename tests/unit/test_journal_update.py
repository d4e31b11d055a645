"""An update's section of a VM's journal (resume, load, rewrite, rollback, si_rmxenvm) and made.Swap."""

import json
import os
from dataclasses import dataclass

import pytest

from si_xen import journal
from si_xen.errors import Fatal
from si_xen.made import DiskFile, File, Mount, Swap
from si_xen.record import VmRecord

UPDATE = {"from": "aa", "to": "bb", "mode": "cow", "pid": 77, "started": "2026-12-04 23:00:00", "delete": "image"}
DELETED: list[str] = []


@dataclass(frozen=True)
class Noted(File):
    """A thing whose delete only says so (the order of undo)."""

    kind = "test-update-noted"

    def delete(self):
        DELETED.append(self.path)


@pytest.fixture
def losetup(fp):
    fp.register(["losetup", fp.any()], occurrences=100)
    return fp


def deployed(tmp_path, things=("cfg", "disk")) -> str:
    s = str(tmp_path)
    j = journal.Journal(s, "vm", VmRecord.from_json({"name": "vm", "pid": 1}))
    j.step("disks")
    for t in things:
        j.made(Noted(t))
    j.finish(VmRecord("vm", "deb", image_fingerprint="aa"))
    j.close()
    return s


def test_resume_appends_and_load_puts_the_update_apart(tmp_path):
    s = deployed(tmp_path)
    j = journal.Journal.resume(s, "vm", UPDATE)
    assert j.state.update == UPDATE and j.state.record.image_fingerprint == "aa"
    j.step("snapshot")
    j.made(Noted("copy"))
    j.step("mount")
    j.made(Noted("mnt"))
    j.close()
    for st in (j.state, journal.load(s, "vm")):
        assert st.complete and st.record.image_fingerprint == "aa"  # the VM exists: its old record
        assert st.update == UPDATE and st.update_step == "mount" and st.update_steps == ["snapshot", "mount"]
        assert st.update_things == [Noted("copy"), Noted("mnt")]
        assert st.things == [Noted("cfg"), Noted("disk")] and st.steps == ["disks"]


def test_the_record_ends_the_update_and_replaces_the_old(tmp_path):
    s = deployed(tmp_path)
    j = journal.Journal.resume(s, "vm", UPDATE)
    j.made(Noted("copy"))
    j.finish(VmRecord("vm", "deb", image_fingerprint="bb"))
    j.close()
    for st in (j.state, journal.load(s, "vm")):
        assert st.record.image_fingerprint == "bb" and st.update is None and st.update_things == []
        assert st.things == [Noted("cfg"), Noted("disk")]


def test_a_torn_last_line_after_an_update_is_not_made_and_a_rerun_appends_after_it(tmp_path):
    s = deployed(tmp_path)
    j = journal.Journal.resume(s, "vm", UPDATE)
    j.made(Noted("copy"))
    j.close()
    with open(j.path, "a") as f:
        f.write('{"made": {"kind": "test-up')  # the power went while this line was written
    st = journal.load(s, "vm")
    assert st.update == UPDATE and st.update_things == [Noted("copy")] and st.complete
    again = journal.Journal.resume(s, "vm", {**UPDATE, "pid": 78})  # the next si_updatexenvm
    again.made(Noted("copy2"))
    again.close()
    st = journal.load(s, "vm")  # no corrupt middle line: the torn one was cut
    assert st.update["pid"] == 78 and st.update_things == [Noted("copy"), Noted("copy2")]


def test_resume_needs_a_complete_journal(tmp_path):
    with pytest.raises(Fatal, match="no complete journal"):
        journal.Journal.resume(str(tmp_path), "vm", UPDATE)
    j = journal.Journal(str(tmp_path), "vm", VmRecord.from_json({"name": "vm"}))
    j.close()
    with pytest.raises(Fatal, match="no complete journal"):
        journal.Journal.resume(str(tmp_path), "vm", UPDATE)


def test_rewrite_is_the_deploys_form_again_atomically(tmp_path):
    s = deployed(tmp_path)
    j = journal.Journal.resume(s, "vm", UPDATE)
    j.made(Noted("copy"))
    j.finish(VmRecord("vm", "deb", image_fingerprint="bb"))
    j.close()
    st = journal.load(s, "vm")
    journal.rewrite(s, "vm", st.begin, st.things + [Noted("kernel")], st.record)
    with open(j.path) as f:
        keys = [next(iter(json.loads(line))) for line in f]
    assert keys == ["begin", "made", "made", "made", "record"]
    st = journal.load(s, "vm")
    assert st.things == [Noted("cfg"), Noted("disk"), Noted("kernel")] and st.record.image_fingerprint == "bb"
    assert st.begin.pid == 1 and os.listdir(journal.vm_dir(s)) == ["vm.journal"]


def test_rmxenvm_undoes_the_unfinished_update_then_the_deploy(tmp_path):
    s = deployed(tmp_path)
    j = journal.Journal.resume(s, "vm", UPDATE)
    j.made(Noted("copy"))
    j.made(Noted("mnt"))
    j.close()
    DELETED.clear()
    journal.remove(journal.load(s, "vm"))
    assert DELETED == ["mnt", "copy", "disk", "cfg"] and not os.path.exists(j.path)


def test_an_updates_rollback_undoes_its_things_and_keeps_the_vm(tmp_path):
    s = deployed(tmp_path)
    j = journal.Journal.resume(s, "vm", UPDATE)
    j.made(Noted("copy"))
    j.made(Noted("mnt"))
    DELETED.clear()
    assert j.rollback() == []
    st = journal.load(s, "vm")
    assert DELETED == ["mnt", "copy"] and st.update is None and st.complete
    assert st.things == [Noted("cfg"), Noted("disk")] and st.record.image_fingerprint == "aa"


def _disks(tmp_path, target="VM", new="COPY", old=None):
    paths = [str(tmp_path / n) for n in ("disk.img", "disk.img.upd-9", "disk.img.old-9")]
    for p, text in zip(paths, (target, new, old), strict=True):
        if text is not None:
            with open(p, "w") as f:
                f.write(text)
    return Swap(*paths)


def _state(sw):
    def get(p):
        if not os.path.exists(p):
            return None
        with open(p) as f:
            return f.read()

    return get(sw.target), get(sw.new), get(sw.old)


# (target, new, old) before -> after delete(): the target always stays, no spare is left
DELETES = [
    (("VM", "COPY", None), ("VM", None, None)),  # no rename yet: back, the copy goes
    ((None, "COPY", "VM"), ("COPY", None, None)),  # half done: finished (the copy was synced)
    (("COPY", None, "VM"), ("COPY", None, None)),  # done: the old disk goes
    ((None, None, "VM"), ("VM", None, None)),  # only the old disk left: back in place
]


@pytest.mark.parametrize("before,after", DELETES)
def test_swap_delete_never_leaves_the_vm_without_its_disk(tmp_path, losetup, before, after):
    sw = _disks(tmp_path, *before)
    sw.delete()
    assert _state(sw) == after
    sw.delete()  # idempotent
    assert _state(sw) == after


@pytest.mark.parametrize("before", [("VM", "COPY", None), (None, "COPY", "VM"), ("COPY", None, "VM")])
def test_swap_finish_rolls_forward(tmp_path, before):
    sw = _disks(tmp_path, *before)
    sw.finish()
    assert _state(sw) == ("COPY", None, "VM")


def test_swap_of_lvs_renames_them(fp):
    t, n, o = "/dev/vg0/vm-disk", "/dev/vg0/vm-disk.upd", "/dev/vg0/vm-disk.old"
    fp.register(["lvs", t], returncode=5)  # half done: the VM's LV moved aside
    fp.register(["lvs", n])
    fp.register(["lvrename", n, t])
    fp.register(["lvs", n], returncode=5)
    fp.register(["lvs", o])
    fp.register(["lvs", o])
    fp.register(["lvremove", "-f", o])
    Swap(t, n, o).delete()
    assert fp.call_count(["lvrename", n, t]) == 1 and fp.call_count(["lvremove", "-f", o]) == 1


def test_swap_survives_the_journal(tmp_path, losetup):
    s = deployed(tmp_path)
    j = journal.Journal.resume(s, "vm", UPDATE)
    j.made(DiskFile("/d/disk.img.upd-9"))
    j.made(Mount("/m", "/d/disk.img.upd-9"))
    j.made(Swap("/d/disk.img", "/d/disk.img.upd-9", "/d/disk.img.old-9"))
    j.close()
    assert journal.load(s, "vm").update_things[-1] == Swap("/d/disk.img", "/d/disk.img.upd-9", "/d/disk.img.old-9")


def test_rmxenvm_keep_disks_of_a_half_swapped_update_keeps_the_vms_disk_whole(tmp_path, losetup):
    sw = _disks(tmp_path, None, "COPY", "VM")  # killed between the two renames
    s = str(tmp_path / "state")
    j = journal.Journal(s, "vm", VmRecord.from_json({"name": "vm"}))
    j.made(DiskFile(sw.target))
    j.finish(VmRecord("vm"))
    j.close()
    j = journal.Journal.resume(s, "vm", UPDATE)
    j.made(DiskFile(sw.new))
    j.made(sw)
    j.close()
    journal.remove(journal.load(s, "vm"), keep_disks=True)
    assert _state(sw) == ("COPY", None, None) and not os.path.exists(j.path)
