"""increment.py: rsync's itemized dry run read into what the incremental pull does."""

import os

import pytest

from si_xen.image import increment

DRY_RUN = """receiving incremental file list
*deleting   var/old/a
*deleting   var/old/
>f.st...... etc/motd
.f...p..... etc/app/conf
.L....og... etc/link-owned
cLc........ etc/link
cd+++++++++ opt/new/
.d..t...... etc/
>f+++++++++ etc/name with space

Number of files: 20 (reg: 14, dir: 6)
"""


def test_dry_run_lines_become_deletions_fetches_and_own_inodes():
    ch = increment.parse(DRY_RUN)
    assert ch.deleted == ("var/old/a", "var/old")
    assert ch.fetch == ("etc/motd", "etc/app/conf", "etc/link-owned", "etc/link", "opt/new", "etc",
                        "etc/name with space")
    assert ch.own_inode == ("etc/app/conf", "etc/link-owned"), "attributes alone: the shared inode must not change"


def test_an_escaped_name_means_no_listing():
    assert increment.parse(">f+++++++++ etc/new\\#012line\n") is None


def test_prepare_gives_attribute_changes_their_own_inode_and_never_leaves_the_tree(tmp_path):
    cur, staging = tmp_path / "cur", tmp_path / "staging"
    (cur / "etc").mkdir(parents=True)
    (cur / "etc/conf").write_text("c\n")
    (cur / "etc/gone").write_text("g\n")
    os.symlink("conf", cur / "etc/link")
    (staging / "etc").mkdir(parents=True)
    for n in ("conf", "gone", "link"):
        os.link(cur / "etc" / n, staging / "etc" / n, follow_symlinks=False)
    ch = increment.Changes(deleted=("etc/gone",), fetch=("etc/conf", "etc/link"), own_inode=("etc/conf", "etc/link"))
    names = increment.prepare(str(staging), ch)
    assert names == [".", "etc", "etc/conf", "etc/link"], "the parents of re-made items get their times back"
    assert not (staging / "etc/gone").exists() and (cur / "etc/gone").exists()
    for n in ("conf", "link"):
        a, b = os.lstat(cur / "etc" / n), os.lstat(staging / "etc" / n)
        assert a.st_ino != b.st_ino and a.st_nlink == 1
    assert os.readlink(staging / "etc/link") == "conf" and (staging / "etc/conf").read_text() == "c\n"
    with pytest.raises(ValueError, match="outside the image"):
        increment.prepare(str(staging), increment.Changes(("../cur/etc/conf",), (), ()))
    assert (cur / "etc/conf").exists()
