"""image/manifest.py: a generation's entries saved once per fingerprint, read back or None,
compared with rsync's quick check; and survey's fingerprint unchanged by keeping them."""

import marshal
import os
import stat
from types import SimpleNamespace

import pytest

from si_xen import atomic, deploy, proc
from si_xen.headstart import Headstart
from si_xen.image import manifest, survey

# A tree given as scandir and lstat would (uid, gid and inode numbers fixed, which a real
# tree's are not): {directory: [(name, mode, uid, gid, size, mtime_ns, ino, nlink, blocks)]}
D, F, L = stat.S_IFDIR | 0o755, stat.S_IFREG | 0o644, stat.S_IFLNK | 0o777
FIXED = {
    "/img": [("etc", D, 0, 0, 4096, 1_700_000_000_000_000_001, 2, 3, 8),
             ("proc", D, 0, 0, 4096, 1_700_000_000_000_000_002, 3, 2, 8),
             ("lost+found", D, 0, 0, 16384, 1_700_000_000_000_000_003, 4, 2, 32),
             ("vmlinuz", L, 0, 0, 24, 1_700_000_000_000_000_004, 5, 1, 0)],
    "/img/etc": [("hosts", F, 0, 0, 120, 1_700_000_000_123_456_789, 10, 1, 8),
                 ("a", F, 1000, 1000, 5, 1_700_000_000_000_000_005, 11, 2, 8),
                 ("b", F, 1000, 1000, 5, 1_700_000_000_000_000_005, 11, 2, 8),
                 ("system-id", stat.S_IFREG | 0o600, 0, 0, 16, 1_700_000_000_000_000_006, 12, 1, 8),
                 ("ssl", D, 0, 0, 4096, 1_700_000_000_000_000_007, 13, 2, 8)],
    "/img/etc/ssl": [],
    "/img/proc": [("1", D, 0, 0, 0, 1, 100, 2, 0)],
    "/img/lost+found": [("#12", F, 0, 0, 1, 1, 101, 1, 8)],
}
FIXED_FINGERPRINT = "95cdcbbc68a0d9b7"  # survey() before manifests existed (issue 28): bases are named by it


class _Scan(list):
    def __enter__(self):
        return iter(self)

    def __exit__(self, *exc):
        return False


def _scandir(path, real=os.scandir):
    if path not in FIXED:
        return real(path)
    return _Scan(SimpleNamespace(name=n, path=f"{path}/{n}", stat=lambda follow_symlinks, st=st: st)
                 for n, *facts in FIXED[path]
                 for st in [SimpleNamespace(st_mode=facts[0], st_uid=facts[1], st_gid=facts[2], st_size=facts[3],
                                            st_mtime_ns=facts[4], st_ino=facts[5], st_nlink=facts[6],
                                            st_blocks=facts[7], st_dev=1)])


@pytest.fixture
def fixed(monkeypatch):
    monkeypatch.setattr(os, "scandir", _scandir)
    real = os.readlink
    monkeypatch.setattr(os, "readlink", lambda p: "boot/vmlinuz-6.1.0-13-amd64" if p == "/img/vmlinuz" else real(p))


def test_the_fingerprint_of_a_fixed_tree_is_pinned(fixed, tmp_path):
    s = survey.survey("/img")
    assert s.fingerprint == FIXED_FINGERPRINT
    assert s.entries == (("/etc", 4096), ("/lost+found", 16384), ("/proc", 4096), ("/vmlinuz", 0),
                         ("/etc/a", 4096), ("/etc/hosts", 4096), ("/etc/ssl", 4096), ("/etc/system-id", 4096))
    assert s.excluded == ("/etc/system-id", "/lost+found", "/proc")
    assert survey.survey("/img", str(tmp_path)) == s  # keeping the rows changes nothing


def test_the_manifest_holds_every_name_with_its_facts(fixed, tmp_path):
    survey.survey("/img", str(tmp_path))
    rows = manifest.load(str(tmp_path), FIXED_FINGERPRINT)
    assert sorted(rows) == ["/etc", "/etc/a", "/etc/b", "/etc/hosts", "/etc/ssl", "/etc/system-id",
                            "/lost+found", "/proc", "/vmlinuz"]  # skipped contents are not in it
    assert rows["/etc/hosts"] == (F, 0, 0, 120, 1_700_000_000_123_456_789, 0, "")
    assert rows["/etc/a"] == rows["/etc/b"] == (F, 1000, 1000, 5, 1_700_000_000_000_000_005, 1, "")
    assert rows["/vmlinuz"] == (L, 0, 0, 24, 1_700_000_000_000_000_004, 0, "boot/vmlinuz-6.1.0-13-amd64")


def _tree(root):
    os.makedirs(root / "etc/ssl")
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc/a").write_text("one")
    os.link(root / "etc/a", root / "etc/b")
    os.symlink("boot/vmlinuz-1", root / "vmlinuz")
    (root / "outside").write_text("x")
    return root


def test_a_tree_walked_saved_and_loaded_again(tmp_path):
    root = _tree(tmp_path / "img")
    os.link(root / "outside", tmp_path / "other")  # nlink 2, but one name in the tree: no group
    rows = survey.manifest_of(str(root))
    assert rows["/etc/a"][5] == rows["/etc/b"][5] == 1 and rows["/outside"][5] == 0
    assert rows["/vmlinuz"][6] == "boot/vmlinuz-1" and rows["/etc/hosts"][6] == ""
    facts = str(tmp_path / "state/images")
    fp = survey.survey(str(root), facts).fingerprint  # no state dir yet: no VM was ever made here
    assert not os.path.exists(tmp_path / "state")
    (tmp_path / "state").mkdir()
    assert survey.survey(str(root), facts).fingerprint == fp
    assert manifest.load(facts, fp) == rows
    assert stat.S_IMODE(os.stat(manifest.path_for(facts, fp)).st_mode) == 0o600
    manifest.save(facts, fp, str(root), manifest.Kept())  # a generation's manifest is written once
    assert manifest.load(facts, fp) == rows
    assert manifest.load(facts, "cd34") is None


@pytest.mark.parametrize("data", [b"", b"\x00garbage", b"\xe9" * 40, None])
def test_a_corrupt_or_foreign_manifest_is_none(tmp_path, data):
    good = marshal.dumps((manifest.VERSION, "ab12", [marshal.dumps([("/etc", D, 0, 0, 0, 0, 2)], 2)], [], {}))
    (tmp_path / "manifest-ab12").write_bytes(good)
    assert manifest.load(str(tmp_path), "ab12") == {"/etc": (D, 0, 0, 0, 0, 0, "")}
    if data is None:  # another fingerprint's, under this one's name
        data = good.replace(b"ab12", b"ff00")
    (tmp_path / "manifest-ab12").write_bytes(data)
    assert manifest.load(str(tmp_path), "ab12") is None
    (tmp_path / "manifest-ab12").write_bytes(good[:-3])  # cut short
    assert manifest.load(str(tmp_path), "ab12") is None
    for parts in ([b"\x00"], [], {}), ([], [], []), ([], 5, {}), ([good], [], {}):  # garbled inside
        (tmp_path / "manifest-ab12").write_bytes(marshal.dumps((manifest.VERSION, "ab12", *parts)))
        assert manifest.load(str(tmp_path), "ab12") is None, parts
    (tmp_path / "manifest-ab12").write_bytes(marshal.dumps((2, "ab12", [], [], {})))  # a later format
    assert manifest.load(str(tmp_path), "ab12") is None


def test_diff_of_real_changes(tmp_path):
    root = _tree(tmp_path / "img")
    old = survey.manifest_of(str(root))
    (root / "etc/new").write_text("added")  # /etc's mtime and size change: not a change of /etc
    (root / "etc/hosts").write_text("127.0.0.1 localhost web01\n")  # size
    st = os.stat(root / "etc/a")
    os.utime(root / "etc/a", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # mtime (and /etc/b: the same inode)
    os.chmod(root / "etc/ssl", 0o700)  # a directory's mode
    (root / "outside").unlink()
    mtime = os.lstat(root / "vmlinuz").st_mtime_ns
    os.unlink(root / "vmlinuz")  # a target of the same length, the same mtime: only the target tells
    os.symlink("boot/vmlinuz-2", root / "vmlinuz")
    os.utime(root / "vmlinuz", ns=(mtime, mtime), follow_symlinks=False)
    d = manifest.diff(old, survey.manifest_of(str(root)))
    assert d == manifest.Diff(("/etc/new",), ("/etc/a", "/etc/b", "/etc/hosts", "/etc/ssl", "/vmlinuz"), ("/outside",))
    assert len(d) == 7 and len(manifest.diff(old, old)) == 0


def _f(mode=F, uid=0, gid=0, size=1, mtime=1, link=0, target=""):
    return (mode, uid, gid, size, mtime, link, target)


@pytest.mark.parametrize("old, new, changed", [
    (_f(), _f(uid=1000), True),
    (_f(), _f(gid=4), True),
    (_f(), _f(mode=stat.S_IFREG | 0o600), True),
    (_f(), _f(mode=D), True),  # a file become a directory
    (_f(mode=D), _f(mode=D, size=8192, mtime=5), False),
    (_f(mode=D), _f(mode=D, uid=1000), True),
    (_f(mode=L, size=3, target="a/b"), _f(mode=L, size=3, target="a/c"), True),
])
def test_diff_compares_what_rsync_quick_check_does(old, new, changed):
    assert manifest.diff({"/p": old}, {"/p": new}).changed == (("/p",) if changed else ())


def test_diff_compares_link_groups_by_their_names_not_their_numbers():
    old = {"/a": _f(link=1), "/b": _f(link=1), "/c": _f(link=2), "/d": _f(link=2)}
    renumbered = {"/a": _f(link=7), "/b": _f(link=7), "/c": _f(link=3), "/d": _f(link=3)}
    assert len(manifest.diff(old, renumbered)) == 0
    split = {"/a": _f(link=1), "/b": _f(), "/c": _f(link=1), "/d": _f(link=1)}  # every group's names changed
    assert manifest.diff(old, split).changed == ("/a", "/b", "/c", "/d")
    swapped = {"/a": _f(link=2), "/b": _f(link=2), "/c": _f(link=1), "/d": _f(link=1)}
    assert len(manifest.diff(old, swapped)) == 0


def test_by_dir_counts_paths_per_directory_cut_to_depth():
    paths = ["/var/log/apt/history.log", "/var/log/syslog", "/var/lib/dpkg/status", "/etc/hosts", "/vmlinuz", "/var"]
    assert manifest.by_dir(paths) == [("/", 2), ("/var/log", 2), ("/etc", 1), ("/var/lib", 1)]
    assert manifest.by_dir(paths, depth=1) == [("/var", 3), ("/", 2), ("/etc", 1)]
    assert manifest.by_dir([]) == []


def test_prune_keeps_the_manifests_records_name_and_nothing_else_is_touched(tmp_path):
    for fp in ("aa", "bb", "cc"):
        manifest.save(str(tmp_path), fp, "/", manifest.Kept())
    (tmp_path / "walk-0123").write_bytes(b"")
    assert manifest.prune(str(tmp_path), {"bb"}) == ["aa", "cc"]
    assert sorted(os.listdir(tmp_path)) == ["manifest-bb", "walk-0123"]
    assert manifest.prune(str(tmp_path / "none"), set()) == []


def test_survey_saves_one_manifest_once_per_generation(tmp_path, monkeypatch):
    root = _tree(tmp_path / "img")
    facts = tmp_path / "images"
    s = survey.survey(str(root), str(facts))
    assert os.listdir(facts) == [f"manifest-{s.fingerprint}"]
    assert manifest.load(str(facts), s.fingerprint) == survey.manifest_of(str(root))

    def written(*a, **kw):
        raise AssertionError("written again")

    monkeypatch.setattr(atomic, "write", written)
    assert survey.survey(str(root), str(facts)) == s
    assert survey.survey(str(root)) == s  # a dry run's walk: no manifest
    (root / "etc/hosts").write_text("changed")
    monkeypatch.undo()
    s2 = survey.survey(str(root), str(facts))
    assert s2.fingerprint != s.fingerprint and len(os.listdir(facts)) == 2


def test_a_manifest_that_cannot_be_saved_leaves_the_survey_alone(tmp_path):
    root = _tree(tmp_path / "img")
    (tmp_path / "file").write_text("")  # a facts dir that cannot be made
    assert survey.survey(str(root), str(tmp_path / "file")) == survey.survey(str(root))


def test_a_deploys_walks_save_beside_the_image_facts_and_dry_runs_do_not(monkeypatch):
    walks = []

    class Ahead:
        def __init__(self, fn, *args):
            walks.append((fn, *args))

        def close(self):
            pass

    monkeypatch.setattr(proc, "Ahead", Ahead)
    image = SimpleNamespace(path="/img")
    Headstart.start(image, ["web01", "web02"], "/st", dry_run=False).close()
    assert Headstart.start(image, ["web01"], "/st", dry_run=True).walk is None
    deploy._walk_again(SimpleNamespace(plan=SimpleNamespace(fingerprint="ab12"), image=image,
                                       settings=SimpleNamespace(paths={"state_dir": "/st"})))
    assert walks == [(survey.survey, "/img", "/st/images")] * 2
