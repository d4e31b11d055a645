"""Patterns.matches agrees with real rsync: each pattern of the unit table, SystemImager's and
si-xen's real lists, and random patterns are given to `rsync -a --exclude-from=F SRC/ DST/` on
plain directories, and every path rsync left out is exactly one Patterns says it excludes."""

from __future__ import annotations

import os
import random
import subprocess

import pytest

from si_xen import excludes, populate
from si_xen.distros import detect
from si_xen.excludes import Patterns
from si_xen.guestfs import Guest
from tests.conftest import need_tools
from tests.unit.fixups.trees import build
from tests.unit.test_excludes import EXTRA, TABLE

pytestmark = pytest.mark.integration


def _tree(root: str, entries: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Make the entries (guest path, is_dir) under root; return every entry with its ancestors."""
    out: dict[str, bool] = {}
    for path, is_dir in entries:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            out["/" + "/".join(parts[:i])] = True
        out[path] = is_dir
    for path, is_dir in sorted(out.items()):
        host = root + path
        if is_dir:
            os.makedirs(host, exist_ok=True)
        elif not os.path.lexists(host):
            os.makedirs(os.path.dirname(host), exist_ok=True)
            with open(host, "w") as f:
                f.write("x\n")
    return sorted(out.items())


def _rsync_left_out(tmp, patterns: list[str], entries: list[tuple[str, bool]]):
    """(every entry and ancestor, {path: rsync left it out}), from one rsync run."""
    src, dst, lst = os.path.join(tmp, "src"), os.path.join(tmp, "dst"), os.path.join(tmp, "exclude")
    os.makedirs(src)
    os.makedirs(dst)
    every = _tree(src, entries)
    with open(lst, "w") as f:
        f.write("".join(p + "\n" for p in patterns))
    subprocess.run(["rsync", "-a", f"--exclude-from={lst}", src + "/", dst + "/"], check=True)
    return every, {p: not os.path.lexists(dst + p) for p, _ in every}


def _disagreements(tmp, patterns: list[str], entries: list[tuple[str, bool]]) -> list:
    every, got = _rsync_left_out(tmp, patterns, entries)
    p = Patterns(patterns)
    return [(path, is_dir, got[path]) for path, is_dir in every if p.matches(path, is_dir) != got[path]]


@pytest.fixture(autouse=True)
def _rsync():
    need_tools("rsync")


@pytest.mark.parametrize("pattern,path,is_dir,expected", TABLE)
def test_table_row_agrees_with_rsync(tmp_path, pattern, path, is_dir, expected):
    """The row's path and each of its ancestors: Patterns says what rsync did, and the table's
    expectation is rsync's own."""
    every, got = _rsync_left_out(str(tmp_path), [pattern], [(path, is_dir)])
    assert got[path] is expected, f"rsync {'left out' if got[path] else 'copied'} {path} for {pattern!r}"
    p = Patterns([pattern])
    assert [(q, d) for q, d in every if p.matches(q, d) != got[q]] == []


# a tree like a VM's: files and directories the real lists name, with neighbours they do not
VM_TREE = [(p, False) for p in EXTRA if not p.startswith("/etc/sysconfig/network/")] + [
    ("/etc/ssh/ssh_host_rsa_key", False), ("/etc/ssh/ssh_host_rsa_key.pub", False),
    ("/etc/fstab", False), ("/etc/mtab", False), ("/etc/machine-id", False), ("/var/lib/dbus/machine-id", False),
    ("/etc/sysconfig/network", False), ("/etc/sysconfig/network-scripts/ifcfg-eth0", False),
    ("/etc/udev/rules.d/70-persistent-net.rules", False), ("/etc/udev/rules.d/85-hwclock.rules", False),
    ("/var/log/syslog", False), ("/var/log/apt/history.log", False), ("/var/lib/dhcp/dhclient.leases", False),
    ("/var/lib/dhcp/dhclient.eth0.leases", False), ("/var/lib/systemd/random-seed", False),
    ("/var/lib/nfs/state", False), ("/var/lib/nfs/rpc_pipefs/x", False), ("/var/spool/cron/root", False),
    ("/var/lock", True), ("/var/run", True), ("/var/cache/apt/pkgcache.bin", False), ("/var/tmp/kept", False),
    ("/home/u/.profile", False), ("/home/lost+found", True), ("/lost+found", True), ("/mnt", True),
    ("/media/cdrom", True), ("/proc/1/stat", False), ("/sys/kernel/x", False), ("/dev/null", False),
    ("/dev/pts/0", False), ("/run/lock/x.pid", False), ("/tmp/x", False), ("/etc/system-id", False),
    ("/var/lib/si-xen/golden/etc/network/interfaces", False), ("/boot/vmlinuz-6.1", False),
    ("/usr/lib/modules/6.1/modules.dep", False), ("/srv/share/f", False), ("/data/db/x.journal/.journal", False),
    ("/etc/lvm/archive/vg0_00001.vg", False), ("/etc/lvm/.cache", False), ("/lib/klibc/events/x", False),
]


@pytest.mark.parametrize("family", ["debian12", "centos7", "leap15"])
def test_real_lists_agree_with_rsync(tmp_path, family):
    vm = build(tmp_path / "vm", family)
    fstab = "UUID=1 / ext4 defaults 0 1\nnfs01:/srv/share /srv/share nfs defaults 0 0\ntmpfs /dev/shm tmpfs defaults 0 0\n"
    with open(os.path.join(vm, "etc/fstab"), "w") as f:
        f.write(fstab)
    excluded = [*populate.EXCLUDES, "/dev/*", *excludes.si_list(None, vm), *excludes.nonlocal_mounts(vm)]
    identity = excludes.identity_patterns(detect(Guest(vm)), vm, nameservers_given=True)
    for i, patterns in enumerate((excluded, identity, excluded + identity)):
        assert _disagreements(str(tmp_path / f"run{i}"), patterns, VM_TREE) == []


ALPHABET = ["a", "b", "ab", "/", "*", "**", "***", "?", "[ab]", "[!a]", "[a-b]", ".", "\\*"]
RANDOM_TREE = [(p, d) for p, d in [
    ("/a", False), ("/b/a", False), ("/b/b/ab", True), ("/ab/a.b", False), ("/ab/b/a/b", False),
    ("/a.a/b", True), ("/b/ba/a", False), ("/aa/bb/ab/a", False), ("/a*b", False), ("/b/a*/x", False),
    ("/ba", True), ("/bab/b.a", False), ("/ab/ab/ab", True), ("/.a/b", False), ("/b/.b", False),
]]


def test_random_patterns_agree_with_rsync(tmp_path):
    """200 patterns made of rsync's pieces (anchors, '*', '**', '***', '?', classes, escapes,
    trailing '/'), seeded: each one's result on a tree equals rsync's."""
    rng = random.Random(28)
    wrong = []
    for i in range(200):
        pat = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 5)))
        if rng.random() < 0.3:
            pat = "/" + pat
        if rng.random() < 0.2:
            pat += "/"
        if pat.strip("/") == "":
            continue
        for d in _disagreements(str(tmp_path / f"r{i}"), [pat], RANDOM_TREE):
            wrong.append((pat, *d))
    assert wrong == []
