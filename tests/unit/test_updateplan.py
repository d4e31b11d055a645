"""updateplan.py: what an update deletes, fetches, keeps and reruns, one rule per test (design §3)."""

import fnmatch
import stat
import time

import pytest

from si_xen import populate, updateplan
from si_xen.updateplan import Changes, files_from, free_needed, needed_by_mount, plan_update, rsync_argv

T0, T1 = 1_700_000_000_000_000_000, 1_700_000_500_000_000_000


def F(size=10, mtime=T0, mode=0o644, uid=0, link=0):
    return (stat.S_IFREG | mode, uid, 0, size, mtime, link, "")


def D(mode=0o755, mtime=T0):
    return (stat.S_IFDIR | mode, 0, 0, 4096, mtime, 0, "")


def L(target, mtime=T0):
    return (stat.S_IFLNK | 0o777, 0, 0, len(target), mtime, 0, target)


BASE = {"/etc": D(), "/etc/motd": F(), "/etc/hosts": F(), "/etc/ssh": D(), "/etc/ssh/ssh_host_rsa_key": F(),
        "/home": D(), "/usr": D(), "/usr/bin": D(), "/usr/bin/a": F(), "/var": D(), "/var/log": D(),
        "/var/log/syslog": F()}
EXCLUDED = ("/var/log/*", "/proc/*")
IDENTITY = ("/etc/ssh/ssh_host_*", "/etc/machine-id")


def classify(path, is_dir):
    if any(fnmatch.fnmatchcase(path, x) for x in EXCLUDED):
        return "excluded"
    if any(fnmatch.fnmatchcase(path, x) for x in IDENTITY):
        return "identity"
    return None


def plan(old, new, vm, owned=None, watches=None, fixups=("hostname", "systemimager"), **kw):
    return plan_update(old, new, vm, classify, owned or {}, watches or {}, fixups, **kw)


def tree(base=BASE, drop=(), **changes):
    out = {p: f for p, f in base.items() if p not in drop}
    out.update({k if k.startswith("/") else "/" + k.replace("__", "/"): f for k, f in changes.items()})
    return out


def test_the_same_tree_changes_nothing():
    c = plan(BASE, BASE, BASE)
    assert c == Changes(rerun=("systemimager",))  # always: IMAGE_LAST_SYNCED_TO


def test_a_file_added_or_changed_by_the_image_is_fetched():
    new = tree(usr__bin__b=F(), usr__bin__a=F(mtime=T1))  # same size, new mtime
    c = plan(BASE, new, BASE)
    assert c.fetch == ("/usr/bin/a", "/usr/bin/b") and c.delete == () and c.fetch_bytes == 20


@pytest.mark.parametrize("facts", [F(mode=0o600), F(uid=5), F(size=11), F(mtime=T1), L("x")])
def test_a_local_edit_of_an_image_file_is_reverted(facts):
    c = plan(BASE, BASE, tree(etc__motd=facts))
    assert c.fetch == ("/etc/motd",)


def test_a_directory_compares_by_type_mode_and_owner_only():
    assert plan(BASE, BASE, tree(usr__bin=D(mtime=T1))).fetch == ()
    assert plan(BASE, BASE, tree(usr__bin=D(mode=0o700))).fetch == ("/usr/bin",)


def test_a_symlink_retargeted_is_fetched():
    old = tree(vmlinuz=L("boot/a"))
    assert plan(old, tree(vmlinuz=L("boot/b")), old).fetch == ("/vmlinuz",)


def test_a_local_file_is_kept_and_an_image_removal_deleted():
    old = tree(usr__bin__gone=F())
    vm = tree(usr__bin__gone=F(), home__u=D(), home__u__f=F())
    c = plan(old, BASE, vm)
    assert c.delete == ("/usr/bin/gone",)
    assert c.kept_local == ("/home/u", "/home/u/f")


def test_no_delete_deletes_nothing():
    old = tree(usr__bin__gone=F())
    c = plan(old, BASE, tree(usr__bin__gone=F(), home__f=F()), delete="none")
    assert c.delete == () and c.kept_local == ("/home/f", "/usr/bin/gone")


def test_delete_local_deletes_the_local_files_too():
    old = tree(usr__bin__gone=F())
    c = plan(old, BASE, tree(usr__bin__gone=F(), home__u=D(), home__u__f=F()), delete="local")
    assert c.delete == ("/home/u/f", "/usr/bin/gone", "/home/u") and c.kept_local == ()


def test_without_the_old_manifest_it_is_two_way():
    vm = tree(usr__bin__gone=F(), etc__motd=F(size=3))
    c = plan(None, BASE, vm)
    assert c.delete == () and c.kept_local == ("/usr/bin/gone",) and c.fetch == ("/etc/motd",)
    assert plan(None, BASE, vm, delete="local").delete == ("/usr/bin/gone",)


def test_a_bad_delete_mode_is_refused():
    with pytest.raises(ValueError):
        plan(BASE, BASE, BASE, delete="all")


def test_identity_and_excluded_paths_are_untouched():
    new = tree(etc__ssh__ssh_host_rsa_key=F(size=99), var__log__syslog=F(size=99), var__log__new=F(),
               **{"/etc/machine-id": F()})
    vm = tree(var__log__local=F(), etc__ssh__ssh_host_ed25519_key=F())
    for mode in updateplan.DELETES:
        c = plan(BASE, new, vm, delete=mode)
        assert c.fetch == c.delete == c.kept_local == ()


def test_an_excluded_directory_covers_its_contents():
    def by_dir(path, is_dir):
        return "excluded" if path == "/srv" and is_dir else None
    vm = tree(srv=D(), srv__data=F(), srv__sub=D(), srv__sub__x=F())
    c = plan_update(BASE, BASE, vm, by_dir, {}, {}, ())
    assert c.delete == c.kept_local == c.fetch == ()
    c = plan_update(BASE, BASE, vm, by_dir, {}, {}, (), delete="local")
    assert c.delete == ()


def test_an_owned_path_changes_only_with_the_image():
    owned = {"hostname": ("/etc/hosts",), "kernel": ("/usr/lib/modules/6.1/",)}
    base = tree(usr__lib=D(), usr__lib__modules=D())
    vm = tree(base, etc__hosts=F(size=50), **{"/usr/lib/modules/6.1": D(), "/usr/lib/modules/6.1/x": F()})
    c = plan(base, base, vm, owned)  # the fixups wrote them: the image did not change them
    assert c.fetch == c.delete == c.kept_local == () and c.rerun == ("systemimager",)
    c = plan(base, tree(base, etc__hosts=F(mtime=T1)), vm, owned)  # the golden /etc/hosts changed
    assert c.fetch == ("/etc/hosts",) and c.rerun == ("hostname", "systemimager")
    old = dict(vm, **{"/etc/hosts": BASE["/etc/hosts"]})  # an image that had the modules, then dropped them
    c = plan(old, base, vm, owned, fixups=("kernel",))
    assert c.delete == ("/usr/lib/modules/6.1/x", "/usr/lib/modules/6.1") and c.fetch == ()
    assert c.rerun == ("kernel",)


def test_an_owned_path_without_the_old_manifest_counts_as_changed():
    c = plan(None, BASE, tree(etc__hosts=F(size=50)), {"hostname": ("/etc/hosts",)})
    assert c.fetch == ("/etc/hosts",) and c.rerun == ("hostname", "systemimager")


def test_an_owned_path_the_image_never_had_is_left_to_its_fixup():
    vm = tree(etc__udev=D(), etc__udev__70_net=F())
    c = plan(BASE, BASE, vm, {"macs": ("/etc/udev/70_net",)}, delete="local")
    assert c.delete == () and c.kept_local == ("/etc/udev",)  # the directory is local, its file the fixup's


def test_a_directory_the_image_removed_is_kept_while_it_holds_local_files():
    old = tree(var__lib=D(), var__lib__app=D(), var__lib__app__conf=F())
    vm = tree(var__lib=D(), var__lib__app=D(), var__lib__app__conf=F(), var__lib__app__db=F())
    c = plan(old, BASE, vm)
    assert c.delete == ("/var/lib/app/conf",)
    assert c.kept_local == ("/var/lib", "/var/lib/app", "/var/lib/app/db")
    c = plan(old, BASE, vm, delete="local")
    assert c.delete == ("/var/lib/app/conf", "/var/lib/app/db", "/var/lib/app", "/var/lib")


def test_a_directory_the_image_removed_is_kept_while_it_holds_excluded_files():
    old = tree(var__log__app=D())  # /var/log/* excluded: so is its contents
    assert plan(old, BASE, tree(var__log__app=D(), var__log__app__x=F())).delete == ()
    old = tree(opt=D(), opt__a=F())
    vm = tree(opt=D(), opt__a=F(), opt__ssh_host_x=F())

    def also(path, is_dir):
        return "identity" if path == "/opt/ssh_host_x" else None
    c = plan_update(old, BASE, vm, also, {}, {}, ())
    assert c.delete == ("/opt/a",) and c.kept_local == ("/opt",)


def test_a_hard_link_group_is_fetched_whole():
    old = tree(usr__bin__x=F(link=1), usr__bin__y=F(link=1), usr__bin__z=F(link=1))
    new = tree(usr__bin__x=F(mtime=T1, link=7), usr__bin__y=F(mtime=T1, link=7), usr__bin__z=F(mtime=T1, link=7))
    vm = dict(new, **{"/usr/bin/y": F(link=1), "/usr/bin/z": F(link=1)})  # only x was refreshed, say
    c = plan(old, new, vm)
    assert c.fetch == ("/usr/bin/x", "/usr/bin/y", "/usr/bin/z") and c.delete == ()
    assert c.fetch_bytes == 10  # one inode's data


def test_a_hard_link_group_that_changed_its_names_is_fetched():
    linked = tree(usr__bin__x=F(link=1), usr__bin__y=F(link=1))
    apart = tree(usr__bin__x=F(), usr__bin__y=F())
    assert plan(apart, linked, apart).fetch == ("/usr/bin/x", "/usr/bin/y")
    c = plan(linked, apart, linked)  # rsync would find both up to date and leave them linked
    assert c.fetch == c.delete == ("/usr/bin/x", "/usr/bin/y")


def test_the_group_numbers_of_two_trees_do_not_matter():
    a = tree(usr__bin__x=F(link=1), usr__bin__y=F(link=1))
    b = tree(usr__bin__x=F(link=2), usr__bin__y=F(link=2))
    assert plan(a, b, a).fetch == ()


@pytest.mark.parametrize("was, now", [(F(), D()), (D(), L("x")), (L("x"), F()), (F(), L("x"))])
def test_a_type_change_is_a_delete_then_a_fetch(was, now):
    old = tree(opt__t=was)
    c = plan(old, tree(opt__t=now), old, delete="none")  # even so: rsync replaces the entry too
    assert c.delete == ("/opt/t",) and c.fetch == ("/opt/t",)


def test_a_directory_replaced_by_a_file_goes_with_its_image_contents():
    old = tree(opt__t=D(), opt__t__a=F())
    c = plan(old, tree(opt__t=F()), old)
    assert c.delete == ("/opt/t/a", "/opt/t") and c.fetch == ("/opt/t",)


def test_a_directory_replaced_by_a_file_but_holding_local_files_is_kept():
    old = tree(opt__t=D(), opt__t__a=F())
    c = plan(old, tree(opt__t=F()), tree(opt__t=D(), opt__t__a=F(), opt__t__mine=F()))
    assert c.delete == ("/opt/t/a",) and c.fetch == () and c.kept_local == ("/opt/t", "/opt/t/mine")


def test_a_file_replaced_by_a_directory_brings_its_contents():
    old = tree(opt__t=F())
    c = plan(old, tree(opt__t=D(), opt__t__a=F(size=5)), old)
    assert c.delete == ("/opt/t",) and c.fetch == ("/opt/t", "/opt/t/a") and c.fetch_bytes == 5


def test_fixups_rerun_when_their_paths_are_touched_in_their_order():
    owned = {"hostname": ("/etc/hosts",), "boot": ("/boot/grub/grub.cfg",)}
    watches = {"issue": lambda p: p == "/etc/issue", "console": lambda p: p.startswith("/boot/")}
    fixups = ("console", "hostname", "issue", "systemimager")
    new = tree(etc__issue=F(), boot=D(), boot__vmlinuz=F())
    c = plan(BASE, new, BASE, owned, watches, fixups)
    assert c.rerun == ("console", "issue", "systemimager")
    assert plan(BASE, BASE, BASE, owned, watches, fixups, always=()).rerun == ()
    gone = tree(etc__issue=F())
    assert plan(gone, BASE, gone, owned, watches, fixups).rerun == ("issue", "systemimager")  # deleted: touched
    assert plan(BASE, BASE, BASE, owned, watches, ("hostname",)).rerun == ()  # always, if it runs at all


def test_fetch_bytes_counts_regular_files_only():
    new = tree(opt=D(), opt__a=F(size=100), opt__l=L("a"), opt__b=F(size=1000))
    assert plan(BASE, new, BASE).fetch_bytes == 1100


def test_free_needed():
    new = tree(opt=D(), opt__a=F(size=10_000), etc__motd=F(size=8000, mtime=T1))
    c = plan(BASE, new, BASE)
    # a new directory (4 KiB), a 12 KiB file, motd grows from 4 to 8 KiB (+4) and for a moment has both (+4)
    assert free_needed(c, new, BASE) == 4096 + 12288 + 4096 + 4096
    old = tree(opt=D(), opt__big=F(size=10**6))
    c = plan(old, BASE, old)
    assert free_needed(c, BASE, old) == 0  # the deletions run first
    c = plan(old, tree(opt=D(), opt__new=F(size=2 * 10**6)), old)
    assert free_needed(c, tree(opt=D(), opt__new=F(size=2 * 10**6)), old) == _blk(2 * 10**6) - _blk(10**6)
    vm = tree(old, opt__big=F(size=10**6, link=1), home__mine=F(size=10**6, link=1))  # a local name keeps the data
    c = plan(old, tree(opt=D(), opt__new=F(size=2 * 10**6)), vm)
    assert c.delete == ("/opt/big",) and free_needed(c, tree(opt=D(), opt__new=F(size=2 * 10**6)), vm) == _blk(2 * 10**6)


def test_needed_by_mount_counts_each_path_on_its_own_filesystem():
    new = tree(opt=D(), opt__a=F(size=10_000), etc__motd=F(size=8000, mtime=T1))
    c = plan(BASE, new, BASE)
    got = needed_by_mount(c, new, BASE, ["/", "/opt", "/op"])  # /op is no prefix of /opt/a
    assert got == {"/": 4096 + 4096, "/opt": 4096 + 12288, "/op": 0}
    assert sum(got.values()) == free_needed(c, new, BASE)


def _blk(n):
    return -(-n // 4096) * 4096


def test_files_from_is_nul_separated_and_relative():
    assert files_from(["/etc", "/etc/a b\nc", "/x\udcff"]) == b"etc\0etc/a b\nc\0x\xff\0"
    assert files_from([]) == b""
    with pytest.raises(ValueError):
        files_from(["/"])


def test_rsync_argv_has_the_deploys_flags_and_no_recursion(monkeypatch):
    got = []
    monkeypatch.setattr(populate.proc, "stream", lambda argv, cb: got.append(argv))
    populate.copy("/img", "/mnt")
    deploy = [a for a in got[0] if a.startswith("-") and not a.startswith(("--exclude", "--info"))]
    argv = rsync_argv("/img/", "/mnt", "/tmp/list")
    assert argv == ["rsync", *deploy, "--modify-window=-1", "--files-from=/tmp/list", "--from0", "/img/", "/mnt/"]
    assert not {"-r", "--recursive", "--delete"} & set(argv)


def test_planning_14000_entries_is_quick():
    new = {f"/d{i}": D() for i in range(140)}
    new.update({f"/d{i}/f{j}": F(size=j) for i in range(140) for j in range(99)})
    vm = dict(new)
    for i in range(140):  # 1 % changed, some local files
        vm[f"/d{i}/f0"] = F(size=1, mtime=T1)
        vm[f"/d{i}/local"] = F()
    t = time.perf_counter()
    c = plan(new, new, vm)
    assert len(c.fetch) == 140 and len(c.kept_local) == 140
    assert time.perf_counter() - t < 1.0


def test_an_excluded_name_of_a_hard_link_group_stays_out():
    old = tree(usr__bin__x=F(link=1), var__log__x=F(link=1))
    new = tree(usr__bin__x=F(mtime=T1, link=1), var__log__x=F(mtime=T1, link=1))
    assert plan(old, new, old).fetch == ("/usr/bin/x",)


def test_nothing_is_written_through_a_link_that_stays():
    old = tree(opt=D(), opt__a=F())
    vm = tree(opt=L("/etc"), **{"/etc/a": F()})  # a fixup made /opt a link (to the host's /etc, if followed)
    c = plan(old, tree(opt=D(), opt__a=F(mtime=T1)), vm, {"f": ("/opt",)})
    assert c.fetch == () and c.delete == ()
    c = plan(old, tree(opt=D(), opt__a=F(mtime=T1)), vm)  # not the fixup's: replaced, then fetched
    assert c.delete == ("/opt",) and c.fetch == ("/opt", "/opt/a")


def test_a_whole_second_mtime_matches_its_second_as_mke2fs_d_leaves_it():
    """mke2fs -d (the one-pass copy) writes no nanoseconds: such a file is the image's, not a change;
    a time in another second, or two different nanosecond times, still differ."""
    from si_xen.updateplan import _differs

    f = (0o100644, 0, 0, 10, 1_700_000_000_123_456_789, 0, "")
    assert not _differs(f, f[:4] + (1_700_000_000_000_000_000,) + f[5:])
    assert _differs(f, f[:4] + (1_700_000_001_000_000_000,) + f[5:])
    assert _differs(f, f[:4] + (1_700_000_000_123_456_788,) + f[5:])


def test_an_image_file_changed_in_the_second_the_vm_was_made_from_is_still_fetched():
    """The VM's copy has whole seconds (mke2fs -d); the image's file changed within that second:
    the old generation's facts say the VM holds the old file (found by a 2-second CI test)."""
    t0, t1 = 1_700_000_000_100_000_000, 1_700_000_000_900_000_000
    old, new = tree(etc__motd=F(mtime=t0)), tree(etc__motd=F(mtime=t1))
    vm = tree(etc__motd=F(mtime=1_700_000_000_000_000_000))
    assert plan(old, new, vm).fetch == ("/etc/motd",)
    assert plan(new, new, vm).fetch == ()  # unchanged in the image: the whole second still matches
    assert plan(old, new, tree(etc__motd=F(mtime=t1))).fetch == ()  # the VM already has it
    whole = 1_700_000_000_000_000_000  # the image's new file at a whole second: the VM's truncated old one matches it
    assert plan(old, tree(etc__motd=F(mtime=whole)), vm).fetch == ("/etc/motd",)
