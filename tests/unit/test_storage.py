"""Every backend is the Storage the rest of si-xen calls; bases are built and pruned through it."""

import inspect
import os
from types import SimpleNamespace

import pytest

from si_xen import bases, journal, storage
from si_xen.errors import Fatal
from si_xen.fixups.spec import spec_from_plan
from si_xen.plan import Disk
from si_xen.record import VmRecord
from si_xen.storage import CloneStorage, FileBackend, GivenBackend, LvmBackend, Storage

DISK = Disk("disk", "/", "ext4", 2048, "d", "xvda2", "/v/disk.img")


def methods(proto) -> dict:
    """The methods ``proto`` itself declares (its bases' are checked with them)."""
    return {n: v for n, v in vars(proto).items() if inspect.isfunction(v) and not n.startswith("_")}


def params(fn) -> list:
    return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("cls,protos", [(FileBackend, (Storage, CloneStorage)), (LvmBackend, (Storage, CloneStorage)),
                                        (GivenBackend, (Storage,))])
def test_every_backend_has_every_method_of_its_protocols(cls, protos):
    for proto in protos:
        assert set(proto.__annotations__) <= set(vars(cls)), f"{cls.__name__} lacks data of {proto.__name__}"
        for name, fn in methods(proto).items():
            assert callable(getattr(cls, name, None)), f"{cls.__name__} lacks {proto.__name__}.{name}"
            assert params(getattr(cls, name)) == params(fn), f"{cls.__name__}.{name} differs from {proto.__name__}'s"


def test_backends_are_named_in_the_plans_words_and_know_xls():
    made = {k: storage.backend(k, "/srv/xen" if k == "dir" else "vg0") for k in ("dir", "lvm", "given")}
    assert {k: type(b) for k, b in made.items()} == {"dir": FileBackend, "lvm": LvmBackend, "given": GivenBackend}
    assert all(b.kind == k and isinstance(b, Storage) for k, b in made.items())
    assert [isinstance(b, CloneStorage) for b in made.values()] == [True, True, False]
    assert {k: storage.disk_kind(k) for k in made} == {"dir": "file", "lvm": "phy", "given": "phy"}


def test_a_plan_and_a_record_build_the_same_backend():
    plan = SimpleNamespace(storage="lvm", storage_root="vg0", thin_pool="pool0")
    rec = VmRecord("vm", storage="lvm", storage_root="vg0", thin_pool="pool0")
    a = storage.backend_for(plan, "/locks")
    b = storage.backend(rec.storage, rec.storage_root, rec.thin_pool, "/locks")
    assert vars(a) == vars(b) == {"vg": "vg0", "pool": "pool0", "lock_dir": "/locks"}


def test_spec_takes_the_disk_kind_from_storage():
    plan = SimpleNamespace(storage="given", disks=(DISK,), image_name="deb", image_path="/i/deb", hostname="vm",
                           net=None, boot="pvgrub2", kernel=None, initrd=None)
    assert {p.kind for p in spec_from_plan(plan).partitions} == {"phy"}


def test_given_disks_refuse_a_clone_before_anything_is_made(tmp_path):
    j = journal.Journal(str(tmp_path / "state"), "vm", VmRecord("vm", pid=os.getpid()))
    plan = SimpleNamespace(image_name="deb", fingerprint="abc123", disks=(DISK,), hostname="vm")
    with pytest.raises(Fatal, match="given storage cannot hold base disks") as e:
        bases.ensure(plan, None, GivenBackend(), None, j)
    assert "--full-copy" in e.value.fix and j.state.things == []
    assert j.rollback() == []


def test_base_targets_name_image_fingerprint_disk_fs_and_size(tmp_path):
    plan = SimpleNamespace(image_name="deb", fingerprint="abc123",
                           disks=(DISK, Disk("swap", "", "swap", 128, "sw", "xvda1", "/v/swap.img")))
    assert bases.targets(plan, FileBackend(str(tmp_path))) == {
        "disk": f"{tmp_path}/bases/deb-abc123-disk-ext4-2048M.img"}
    assert not bases.ready(plan, FileBackend(str(tmp_path)))


def test_prune_removes_only_the_bases_no_other_vm_uses(tmp_path):
    state, store = str(tmp_path / "state"), tmp_path / "store"
    (store / "bases").mkdir(parents=True)
    old, shared = (str(store / "bases" / f"{n}.img") for n in ("old", "shared"))
    for base in (old, shared):
        for p in (base, base.replace(".img", ".json"), base.replace(".img", ".vmlinuz")):
            open(p, "w").close()
    other = journal.Journal(state, "vm2", VmRecord("vm2", pid=os.getpid()))
    other.finish(VmRecord("vm2", storage="dir", storage_root=str(store), bases=(shared,)))
    other.close()
    gone = VmRecord("vm1", storage="dir", storage_root=str(store), bases=(old, shared))
    bases.prune(gone, state, str(tmp_path / "locks"))
    assert sorted(os.listdir(store / "bases")) == ["shared.img", "shared.json", "shared.vmlinuz"]


def test_prune_removes_an_unused_base_lv_of_the_records_vg(tmp_path, fp):
    fp.register(["lvs", "/dev/vg0/si-base-x"], returncode=0)
    fp.register(["lvremove", "-f", "/dev/vg0/si-base-x"])
    rec = VmRecord("vm1", storage="lvm", storage_root="vg0", thin_pool="pool0", bases=("/dev/vg0/si-base-x",))
    bases.prune(rec, str(tmp_path / "state"), str(tmp_path / "locks"))
    assert fp.call_count(["lvremove", "-f", "/dev/vg0/si-base-x"]) == 1


def test_a_mount_point_that_is_a_guest_link_stays_in_the_guest(tmp_path):
    """An updated VM's (or a clone's) / is untrusted: /var -> /etc (or ../../etc) resolves inside it."""
    from si_xen.errors import Fatal
    from si_xen.storage.mount import _mount_point

    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    (top / "var").symlink_to("../../../../etc")
    assert _mount_point(str(top), "/var") == str(top / "etc")
    assert _mount_point(str(top), "/srv/data") == str(top / "srv/data") and (top / "srv/data").is_dir()
    (top / "opt").write_text("a file")
    with pytest.raises(Fatal, match="mount point /opt in the VM's tree is not a directory"):
        _mount_point(str(top), "/opt")


def test_a_journal_state_that_cannot_be_read_counts_as_dirty(fp):
    """Then the filesystem is read from a private copy, replayed: never stale on a guess."""
    from si_xen.storage.mount import unclean

    fp.register(["dumpe2fs", "-f", "-h", "/d1"], stdout="Filesystem features:      has_journal needs_recovery extent\n")
    fp.register(["dumpe2fs", "-f", "-h", "/d2"], stdout="Filesystem features:      has_journal extent\n")
    fp.register(["dumpe2fs", "-f", "-h", "/d3"], returncode=1, stderr="dumpe2fs: Bad magic number in super-block\n")
    fp.register(["xfs_logprint", "-t", "/x1"], stdout="    log tail: 44 head: 44 state: <CLEAN>\n")
    fp.register(["xfs_logprint", "-t", "/x2"], stdout="    log tail: 2 head: 38 state: <DIRTY>\n", returncode=1)
    fp.register(["xfs_logprint", "-t", "/x3"], returncode=1, stderr="xfs_logprint: cannot read log\n")
    assert [unclean(d, fs) for d, fs in (("/d1", "ext4"), ("/d2", "ext4"), ("/d3", "ext4"), ("/x1", "xfs"),
                                         ("/x2", "xfs"), ("/x3", "xfs"))] == [True, False, True, False, True, True]
    assert unclean("/v", "vfat") is False
