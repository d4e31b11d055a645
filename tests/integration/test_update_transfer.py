"""updateplan.py with real trees and real rsync: the deletions made in Python, then one rsync of the
names listed, turn a VM made from image A into image B, with its local, identity and excluded
files untouched, as SystemImager's own image pass (rsync -av --delete) would; plain directories."""

from __future__ import annotations

import fnmatch
import os
import stat
import subprocess

import pytest

from si_xen import updateplan
from si_xen.image import manifest, survey
from tests.conftest import need_tools

EXCLUDED = ("/var/log/*",)
IDENTITY = ("/etc/ssh/ssh_host_*", "/etc/machine-id")
LOCAL = ("/home/u", "/var/lib/app")
T = 1_600_000_000


def classify(path: str, is_dir: bool) -> str | None:
    if any(fnmatch.fnmatchcase(path, x) for x in EXCLUDED):
        return "excluded"
    return "identity" if any(fnmatch.fnmatchcase(path, x) for x in IDENTITY) else None


def put(root, rel: str, text: str, mtime: int = T) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.utime(path, (mtime, mtime))


def rsync(*argv: str) -> None:
    subprocess.run(["rsync", *argv], check=True, stdout=subprocess.DEVNULL)


@pytest.fixture
def trees(tmp_path):
    """Image A, image B (A changed in every way an image changes) and a VM made from A, then used."""
    need_tools("rsync")
    a, b, vm = (str(tmp_path / n) for n in ("A", "B", "VM"))
    for rel, text in [("etc/motd", "welcome\n"), ("etc/hosts", "127.0.0.1 localhost\n"),
                      ("etc/ssh/ssh_host_rsa_key", "image key\n"), ("usr/bin/changed", "version 1\n"),
                      ("usr/bin/gone", "old tool\n"), ("usr/share/olddir/x", "x\n"), ("usr/share/olddir/sub/y", "y\n"),
                      ("usr/lib/h1", "linked 1\n"), ("opt/t", "a file\n"), ("var/log/syslog", "log\n"),
                      ("boot/a", "kernel a\n"), ("boot/b", "kernel b\n")]:
        put(a, rel, text)
    os.link(os.path.join(a, "usr/lib/h1"), os.path.join(a, "usr/lib/h2"))
    os.symlink("boot/a", os.path.join(a, "vmlinuz"))
    put(a, "usr/bin/tick", "tick 1\n")
    os.utime(os.path.join(a, "usr/bin/tick"), ns=(T * 10**9 + 100, T * 10**9 + 100))
    for d in ("home", "var/lib"):
        os.makedirs(os.path.join(a, d))
    rsync("-aHAX", a + "/", b + "/")
    put(b, "usr/bin/new", "new tool\n")
    put(b, "usr/bin/changed", "version 2\n", T + 100)  # same size, new mtime
    put(b, "usr/bin/tick", "tick 2\n")  # the same second: rsync must compare nanoseconds
    os.utime(os.path.join(b, "usr/bin/tick"), ns=(T * 10**9 + 900, T * 10**9 + 900))
    os.unlink(os.path.join(b, "usr/bin/gone"))
    subprocess.run(["rm", "-r", os.path.join(b, "usr/share/olddir")], check=True)
    os.unlink(os.path.join(b, "vmlinuz"))
    os.symlink("boot/b", os.path.join(b, "vmlinuz"))
    # an image's times are past ones: rsync -av (whole seconds) leaves a link it makes in the second
    # of its image's with the time it made it at (updateplan.rsync_argv compares nanoseconds)
    os.utime(os.path.join(b, "vmlinuz"), (T + 100, T + 100), follow_symlinks=False)
    for h in ("h1", "h2"):
        os.unlink(os.path.join(b, "usr/lib", h))
    put(b, "usr/lib/h1", "linked 2\n", T + 100)
    os.link(os.path.join(b, "usr/lib/h1"), os.path.join(b, "usr/lib/h2"))
    os.unlink(os.path.join(b, "opt/t"))
    put(b, "opt/t/inside", "now a directory\n")
    put(b, "var/log/syslog", "the image's newer log\n")
    put(b, "etc/ssh/ssh_host_rsa_key", "another image key\n")
    os.chmod(os.path.join(b, "etc/ssh"), 0o700)  # listed alone: its key is not sent with it
    rsync("-aHAX", a + "/", vm + "/")
    put(vm, "home/u/f", "my file\n", T + 5)
    put(vm, "var/lib/app/db", "my data\n", T + 5)
    put(vm, "etc/motd", "edited in the VM, longer\n", T + 5)
    put(vm, "etc/ssh/ssh_host_rsa_key", "the VM's own key\n", T + 5)
    put(vm, "etc/machine-id", "0123456789abcdef\n", T + 5)
    put(vm, "var/log/syslog", "the VM's log\n", T + 5)
    return a, b, vm


def apply(changes: updateplan.Changes, src: str, root: str, list_file: str) -> None:
    """What update.py's delete and transfer steps do (there: confined by guestfs.Guest)."""
    for p in changes.delete:
        path = root + p
        (os.rmdir if stat.S_ISDIR(os.lstat(path).st_mode) else os.unlink)(path)
    with open(list_file, "wb") as f:
        f.write(updateplan.files_from(changes.fetch))
    subprocess.run(updateplan.rsync_argv(src, root, list_file), check=True)


def snapshot(root: str, rels) -> dict[str, tuple]:
    """Contents and facts of the files that must not change."""
    out = {}
    for rel in rels:
        st = os.lstat(os.path.join(root, rel))
        with open(os.path.join(root, rel), "rb") as f:
            out[rel] = (f.read(), st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino)
    return out


def image_part(rows: dict, hard_links: bool = True) -> dict:
    """The entries an update makes equal to the image: not excluded, identity or local."""
    return {p: f if hard_links else (*f[:5], 0, f[6]) for p, f in rows.items()
            if classify(p, False) is None and not p.startswith(tuple(x + "/" for x in LOCAL)) and p not in LOCAL
            and p != "/etc/machine-id"}


def contents(root: str, rows: dict) -> dict[str, bytes]:
    out = {}
    for p, f in rows.items():
        if stat.S_ISREG(f[0]):
            with open(root + p, "rb") as fh:
                out[p] = fh.read()
    return out


KEPT = ("home/u/f", "var/lib/app/db", "etc/ssh/ssh_host_rsa_key", "etc/machine-id", "var/log/syslog")


def test_the_update_makes_the_vm_the_new_image_and_keeps_the_rest(trees, tmp_path):
    a, b, vm = trees
    reference = str(tmp_path / "SI")
    rsync("-aHAX", vm + "/", reference + "/")
    before = snapshot(vm, KEPT)
    old, new = survey.manifest_of(a), survey.manifest_of(b)
    changes = updateplan.plan_update(old, new, survey.manifest_of(vm), classify, {}, {}, ("systemimager",))

    assert changes.delete == ("/usr/share/olddir/sub/y", "/usr/share/olddir/sub", "/usr/share/olddir/x",
                              "/usr/bin/gone", "/usr/share/olddir", "/opt/t")
    assert changes.fetch == ("/etc/motd", "/etc/ssh", "/opt/t", "/opt/t/inside", "/usr/bin/changed", "/usr/bin/new",
                             "/usr/bin/tick", "/usr/lib/h1", "/usr/lib/h2", "/vmlinuz")
    assert changes.kept_local == ("/home/u", "/home/u/f", "/var/lib/app", "/var/lib/app/db")
    assert changes.fetch_bytes == sum(os.path.getsize(os.path.join(b, p)) for p in (
        "etc/motd", "opt/t/inside", "usr/bin/changed", "usr/bin/new", "usr/bin/tick", "usr/lib/h1"))

    apply(changes, b, vm, str(tmp_path / "list"))
    after = survey.manifest_of(vm)
    assert manifest.diff(image_part(new), image_part(after)) == manifest.Diff()
    assert contents(vm, image_part(after)) == contents(b, image_part(new))
    assert os.stat(os.path.join(vm, "usr/lib/h1")).st_ino == os.stat(os.path.join(vm, "usr/lib/h2")).st_ino
    assert snapshot(vm, KEPT) == before
    # a second plan finds nothing left to do
    again = updateplan.plan_update(old, new, after, classify, {}, {}, ())
    assert again.fetch == again.delete == ()

    # SystemImager's image pass (si_updateclient), local paths protected as the plan keeps them
    rsync("-av", "--numeric-ids", "--delete", *[f"--exclude={x}" for x in EXCLUDED + IDENTITY + LOCAL],
          b + "/", reference + "/")
    si = survey.manifest_of(reference)
    # -av has no -H (the pair comes apart); and it compares whole seconds, so it misses tick's change
    assert manifest.diff(image_part(si, False), image_part(after, False)) == manifest.Diff(changed=("/usr/bin/tick",))
    del si["/usr/bin/tick"], after["/usr/bin/tick"]
    assert contents(reference, si) == contents(vm, after)


def test_no_delete_and_delete_local(trees, tmp_path):
    a, b, vm = trees
    old, new = survey.manifest_of(a), survey.manifest_of(b)
    rows = survey.manifest_of(vm)
    keep = updateplan.plan_update(old, new, rows, classify, {}, {}, (), delete="none")
    assert "/usr/bin/gone" in keep.kept_local and "/usr/share/olddir/x" in keep.kept_local
    assert keep.delete == ("/opt/t",)  # a type change replaces the entry, as rsync would
    everything = updateplan.plan_update(old, new, rows, classify, {}, {}, (), delete="local")
    assert everything.kept_local == ()
    apply(everything, b, vm, str(tmp_path / "list"))
    assert not os.path.exists(os.path.join(vm, "home/u")) and not os.path.exists(os.path.join(vm, "var/lib/app"))
    assert os.path.exists(os.path.join(vm, "home")) and os.path.exists(os.path.join(vm, "etc/machine-id"))
    assert manifest.diff(image_part(new), image_part(survey.manifest_of(vm))) == manifest.Diff()
