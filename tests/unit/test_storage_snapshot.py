"""Dir storage's copy on write for an update: snapshot (a journaled reflink) and swap."""

import os

from si_xen import journal
from si_xen.made import DiskFile, Swap
from si_xen.record import VmRecord
from si_xen.storage import files


def _vm(d) -> tuple[str, journal.Journal]:
    vm_dir = os.path.join(d, "domains", "vm")
    os.makedirs(vm_dir)
    target = os.path.join(vm_dir, "disk.img")
    with open(target, "w") as f:
        f.write("old tree")
    os.chmod(target, 0o640)
    j = journal.Journal(str(d), "vm", VmRecord.from_json({"name": "vm"}))
    j.made(DiskFile(target))
    j.finish(VmRecord("vm"))
    j.close()
    return target, journal.Journal.resume(str(d), "vm", {"from": "a", "to": "b"})


def _fake_reflinks(monkeypatch, work=True):
    def copy(src, dst):  # a reflink's outcome: dst a new file with src's bytes
        with open(src, "rb") as s, open(dst, "xb") as t:
            t.write(s.read())

    monkeypatch.setattr(files, "reflinks_work", lambda d: work)
    monkeypatch.setattr(files, "reflink", copy)


def test_snapshot_is_a_journaled_copy_and_swap_puts_it_in_place(tmp_path, monkeypatch, fp):
    fp.register(["losetup", fp.any()], occurrences=10)
    _fake_reflinks(monkeypatch)
    target, j = _vm(tmp_path)
    be = files.FileBackend(str(tmp_path))
    new = be.snapshot(target, j)
    assert new == f"{target}.upd-{os.getpid()}" and j.state.update_things == [DiskFile(new)]
    assert os.stat(new).st_mode & 0o777 == 0o640
    with open(new, "w") as f:
        f.write("new tree")
    with open(f"{target}.upd-old", "w") as f:
        f.write("an earlier update's, never discarded")
    old = be.swap(target, new, j)
    j.close()
    assert old == f"{target}.upd-old" and journal.load(str(tmp_path), "vm").update_things[-1] == Swap(target, new, old)
    with open(target) as f, open(old) as g:
        assert (f.read(), g.read()) == ("new tree", "old tree") and not os.path.exists(new)


def test_a_snapshot_rolled_back_leaves_the_vm_untouched(tmp_path, monkeypatch, fp):
    fp.register(["losetup", fp.any()], occurrences=10)
    _fake_reflinks(monkeypatch)
    target, j = _vm(tmp_path)
    new = files.FileBackend(str(tmp_path)).snapshot(target, j)
    assert j.rollback() == [] and not os.path.exists(new)
    with open(target) as f:
        assert f.read() == "old tree"
    assert journal.load(str(tmp_path), "vm").update is None


def test_no_snapshot_where_reflinks_do_not_work(tmp_path, monkeypatch):
    _fake_reflinks(monkeypatch, work=False)
    target, j = _vm(tmp_path)
    assert files.FileBackend(str(tmp_path)).snapshot(target, j) is None and j.state.update_things == []


# A real reflink snapshot and swap: tests/integration/test_update.py (XFS on a loop device, every step
# of the update killed), where the tier's prerequisites fail loudly in CI instead of skipping.
