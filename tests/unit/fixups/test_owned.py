"""The paths si-xen writes in a VM, recorded (Ran.touched, RecordingGuest), so the VM's record
can say which files are si-xen's (an update, a drift report, a rebuild). That every entry a
fixup adds, changes or removes on every tree is one it recorded: test_families.test_idempotent."""

import os
import stat
from dataclasses import replace

import pytest

from si_xen import boot
from si_xen.fixups import run_all
from si_xen.guestfs import Guest, RecordingGuest
from tests.unit import fakeimage
from tests.unit.fixups.conftest import STATIC
from tests.unit.fixups.trees import TREES, entry_facts, unrecorded


def quiet(_msg):
    pass


@pytest.mark.parametrize("name", sorted(TREES))
def test_a_bootloaders_writes_are_recorded_too(tree, name):
    root = tree(name)
    before = entry_facts(root)
    ran = run_all(root, replace(STATIC, pygrub=True), log=quiet)
    assert unrecorded(before, entry_facts(root), set().union(*(r.touched for r in ran))) == set()


def test_a_supplied_kernels_modules_are_one_tree(tree, tmp_path):
    root = tree(sorted(TREES)[0])
    mods = tmp_path / "mods" / "6.1.0-9"
    (mods / "kernel").mkdir(parents=True)
    (mods / "kernel" / "xen-blkfront.ko").write_text("ko")
    spec = replace(STATIC, kernel="/boot/vmlinuz-6.1.0-9", modules=str(mods))
    before = entry_facts(root)
    ran = {r[0]: r for r in run_all(root, spec, log=quiet)}
    assert "/lib/modules/6.1.0-9/" in ran["kernel"].touched
    assert unrecorded(before, entry_facts(root), set().union(*(r.touched for r in ran.values()))) == set()


def test_the_runners_pairs_unpack_as_before(tree):
    for name, changes in run_all(tree(sorted(TREES)[0]), STATIC, only="hostname", log=quiet):
        assert name == "hostname" and changes
    (ran,) = run_all(tree(sorted(TREES)[1]), STATIC, only="hostname", log=quiet)
    assert ran == ("hostname", ran[1]) and "/etc/hosts" in ran.touched


def test_paths_are_recorded_where_the_writes_land(tmp_path):
    root = tmp_path / "g"
    (root / "real").mkdir(parents=True)
    os.symlink("/real", root / "etc")  # an absolute link resolves inside the guest
    g = RecordingGuest(str(root))
    g.write_text("etc/a/b/file", "x")
    g.symlink("target", "etc/link")
    g.unlink("etc/never-there")
    assert g.touched == {"/real/a", "/real/a/b", "/real/a/b/file", "/real/link", "/real/never-there"}
    g.own("lib/modules/1.0")
    assert "/lib/modules/1.0/" in g.touched


def test_the_boot_steps_grub_files_are_recorded(tmp_path):
    g = RecordingGuest(fakeimage.make(tmp_path / "img"))
    g.write_text("/boot/grub/grub.cfg", "golden client menu\n")
    g.touched.clear()
    boot.write_grub_cfg(g, boot.find_kernel(g), "xvda2", False, "Debian (si-xen)")
    assert g.touched == {"/boot/grub/grub.cfg", "/boot/grub/grub.cfg.si-xen-orig"}


def test_facts_are_the_entrys_own(tmp_path):
    (tmp_path / "f").write_text("abc")
    os.symlink("f", tmp_path / "l")
    g = Guest(str(tmp_path))
    st = os.lstat(tmp_path / "f")
    assert g.facts("/f") == [st.st_mode, st.st_uid, st.st_gid, 3, st.st_mtime_ns]
    assert stat.S_ISLNK(g.facts("/l")[0]) and g.facts("/gone") is None and g.facts("/f/x") is None
    assert stat.S_ISDIR(g.facts("/")[0])
