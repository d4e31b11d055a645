"""Storage talks to LVM and mkfs in exact, reviewable command sequences (faked processes)."""

import os

import pytest

from si_xen import bases
from si_xen.errors import Fatal
from si_xen.journal import Journal
from si_xen.plan import Disk
from si_xen.record import VmRecord
from si_xen.storage import lvm
from si_xen.storage.mount import mkfs


@pytest.fixture
def dm_ok(monkeypatch):
    monkeypatch.setattr(lvm, "device_mapper_ok", lambda: True)
    monkeypatch.setattr(lvm.proc, "which", lambda p: f"/sbin/{p}")


@pytest.fixture
def journal(tmp_path):
    return Journal(str(tmp_path / "state"), "vm", VmRecord.from_json({"name": "vm", "pid": os.getpid()}))


DISKS = [Disk("disk", "/", "ext4", 2048, "d", "xvda2", "/dev/vg0/vm-disk"),
         Disk("swap", "", "swap", 128, "sw", "xvda1", "/dev/vg0/vm-swap")]


def test_lvm_validate_checks_vg_room_and_existing_lvs(fp, dm_ok):
    fp.register(["vgs", "--noheadings", "--units", "m", "--nosuffix", "-o", "vg_free", "vg0"], stdout="  5120.00\n")
    fp.register(["lvs", "/dev/vg0/vm-disk"], returncode=5)
    fp.register(["lvs", "/dev/vg0/vm-swap"], returncode=5)
    lvm.LvmBackend("vg0").validate("vm", DISKS, 0, force=False)
    assert fp.call_count(["vgs", fp.any()]) == 1


def test_lvm_refuses_a_full_vg(fp, dm_ok):
    fp.register(["vgs", fp.any()], stdout="  1000.00\n")
    fp.register(["lvs", fp.any()], returncode=5, occurrences=2)
    with pytest.raises(Fatal, match="has 1000 MiB free, 2176 MiB needed"):
        lvm.LvmBackend("vg0").validate("vm", DISKS, 0, force=False)


def test_lvm_refuses_existing_lv_without_force(fp, dm_ok):
    fp.register(["vgs", fp.any()], stdout="  9000\n")
    fp.register(["lvs", "/dev/vg0/vm-disk"], returncode=0)
    fp.register(["lvs", "/dev/vg0/vm-swap"], returncode=5)
    with pytest.raises(Fatal, match="vm-disk already exists.*--force"):
        lvm.LvmBackend("vg0").validate("vm", DISKS, 0, force=False)


def test_lvm_missing_vg(fp, dm_ok):
    fp.register(["vgs", fp.any()], returncode=5, stderr="Volume group \"vg9\" not found")
    with pytest.raises(Fatal, match="volume group 'vg9' not found"):
        lvm.LvmBackend("vg9").validate("vm", DISKS, 0, force=False)


def test_no_device_mapper_is_refused_before_any_command(fp, monkeypatch):
    monkeypatch.setattr(lvm, "device_mapper_ok", lambda: False)
    monkeypatch.setattr(lvm.proc, "which", lambda p: "/sbin/lvcreate")
    with pytest.raises(Fatal, match="no device-mapper.*use --dir"):
        lvm.LvmBackend("vg0").validate("vm", DISKS, 0, force=False)
    assert len(fp.calls) == 0


def test_lvcreate_then_undo_lvremove(fp, journal):
    fp.register(["lvs", "/dev/vg0/vm-disk"], returncode=5)
    fp.register(["lvcreate", "--yes", "--wipesignatures", "y", "-L", "2048M", "-n", "vm-disk", "vg0"])
    fp.register(["lvs", "/dev/vg0/vm-disk"], returncode=0)
    fp.register(["lvremove", "-f", "/dev/vg0/vm-disk"])
    lvm.LvmBackend("vg0").create(DISKS[0], journal)
    assert [str(t) for t in journal.state.things] == ["lv /dev/vg0/vm-disk"]
    assert journal.rollback() == []
    assert [c[0] for c in fp.calls] == ["lvs", "lvcreate", "lvs", "lvremove"]


@pytest.mark.parametrize("fs,argv", [("ext4", ["mkfs.ext4", "-q", "-F"]), ("xfs", ["mkfs.xfs", "-q", "-f"]),
                                     ("ext3", ["mkfs.ext3", "-q", "-F"]), ("swap", ["mkswap"])])
def test_mkfs_commands(fp, fs, argv):
    fp.register([*argv, "/t"])
    mkfs(Disk("d", "/", fs, 1, "", "xvda1", "/t"))
    assert fp.call_count([*argv, "/t"]) == 1


def test_file_backend_is_sparse_and_undone(tmp_path, journal, fp):
    from si_xen.storage.files import FileBackend

    (tmp_path / "vms").mkdir()
    b = FileBackend(str(tmp_path / "vms"))
    d = Disk("disk", "/", "ext4", 1024, "d", "xvda2", b.assign("vm", Disk("disk", "/", "ext4", 1, "")))
    b.create(d, journal)
    st = os.stat(d.target)
    assert st.st_size == 1024 * 2**20 and st.st_blocks == 0
    with pytest.raises(Fatal, match="already exists.*--force"):
        b.validate("vm", [d], 0, force=False)
    fp.register(["losetup", "--noheadings", "-O", "NAME", "-j", d.target])  # no loop device left on it
    assert journal.rollback() == []
    assert os.listdir(tmp_path / "vms") == []  # domains/ too: this deploy made it
    assert not os.path.exists(journal.path)


def test_thin_lvs_base_publish_and_snapshot_clone(fp, journal):
    b = lvm.LvmBackend("vg0", "pool0")
    base = b.base_target(bases.name("deb", "abc123", DISKS[0]))
    assert base == "/dev/vg0/si-base-deb-abc123-disk-ext4-2048M"
    fp.register(["lvs", "/dev/vg0/tmpbase"], returncode=5)
    fp.register(["lvcreate", "--yes", "-V", "2048M", "-T", "vg0/pool0", "-n", "tmpbase"])
    b.create(Disk("disk", "/", "ext4", 2048, "d", "xvda2", "/dev/vg0/tmpbase"), journal)
    fp.register(["lvrename", "vg0", "tmpbase", os.path.basename(base)])
    fp.register(["lvchange", "--addtag", "si_xen_base", "--permission", "r", base])
    b.publish_base("/dev/vg0/tmpbase", base, {})
    fp.register(["lvs", "--noheadings", "-o", "lv_tags", base], stdout="  si_xen_base\n")
    assert b.have_base(base)
    fp.register(["lvs", "/dev/vg0/vm-disk"], returncode=5)
    fp.register(["lvcreate", "--yes", "-s", "-kn", "-n", "vm-disk", f"vg0/{os.path.basename(base)}"])
    fp.register(["lvchange", "-ay", "vg0/vm-disk"])
    b.clone(base, DISKS[0], journal)
    fp.register(["lvs", "/dev/vg0/vm-disk"], returncode=0)
    fp.register(["lvremove", "-f", "/dev/vg0/vm-disk"])
    fp.register(["lvs", "/dev/vg0/tmpbase"], returncode=5)  # renamed to the base: nothing to undo
    assert journal.rollback() == []
    assert fp.call_count(["lvremove", fp.any()]) == 1


def test_incomplete_base_is_not_used(fp):
    fp.register(["lvs", "--noheadings", "-o", "lv_tags", fp.any()], stdout="  \n")
    assert not lvm.LvmBackend("vg0", "pool0").have_base("/dev/vg0/si-base-x")


def test_missing_thin_pool(fp, dm_ok):
    fp.register(["vgs", fp.any()], stdout="  9000\n")
    fp.register(["lvs", "--noheadings", "-o", "lv_attr", "vg0/nopool"], returncode=5)
    with pytest.raises(Fatal, match="thin pool 'vg0/nopool' not found"):
        lvm.LvmBackend("vg0", "nopool").validate("vm", DISKS, 0, force=False)


def test_dry_run_guesses_reflinks_from_the_mount_table_without_writing():
    from si_xen.storage.reflink import fs_type, reflinks_likely

    assert fs_type("/proc/self") == "proc" and fs_type("/sys/kernel") in ("sysfs", "securityfs", "debugfs", "tracefs")
    assert not reflinks_likely("/proc")
