"""excludes.py: rsync's exclude-pattern rules (the same table runs through real rsync in
tests/integration/test_excludes_rsync.py), SystemImager's updateclient list, non-local mounts and
the identity paths of every family."""

from __future__ import annotations

import os
import re
import time

import pytest

from si_xen import excludes
from si_xen.distros import detect
from si_xen.excludes import Patterns, Rules
from si_xen.guestfs import Guest
from tests.unit.fixups.trees import TREES, build, write

# (pattern, guest path, is_dir, excluded?): every rule of man rsync "INCLUDE/EXCLUDE PATTERN RULES"
TABLE = [
    # a leading '/' anchors at the transfer root
    ("/etc/fstab", "/etc/fstab", False, True),
    ("/etc/fstab", "/x/etc/fstab", False, False),
    ("/fstab", "/etc/fstab", False, False),
    # no '/': the final name, at any depth
    ("fstab", "/fstab", False, True),
    ("fstab", "/etc/fstab", False, True),
    ("fstab", "/a/b/fstab", False, True),
    ("fstab", "/etc/fstab.bak", False, False),
    ("fstab", "/etc/myfstab", False, False),
    # an inner '/': the final names, at any depth
    ("etc/fstab", "/etc/fstab", False, True),
    ("etc/fstab", "/x/etc/fstab", False, True),
    ("etc/fstab", "/xetc/fstab", False, False),
    ("*/.journal", "/a/.journal", False, True),
    ("*/.journal", "/a/b/.journal", False, True),
    ("*/.journal", "/.journal", False, False),
    # '*' stops at '/', '**' does not
    ("/etc/*.conf", "/etc/a.conf", False, True),
    ("/etc/*.conf", "/etc/d/a.conf", False, False),
    ("/etc/**.conf", "/etc/d/a.conf", False, True),
    ("/etc/**.conf", "/etc/a.conf", False, True),
    ("*.conf", "/etc/d/a.conf", False, True),
    ("/*", "/etc", True, True),
    ("/*", "/etc/x", False, True),
    ("a/**/b", "/a/x/b", False, True),
    ("a/**/b", "/a/b", False, False),
    ("a/**/b", "/q/a/x/y/b", False, True),
    # a leading '**' matches at the top too
    ("**/x", "/x", False, True),
    ("**/x", "/a/b/x", False, True),
    ("**/x", "/a/b/xx", False, False),
    ("**/", "/a", False, False),  # the root is no directory a pattern matches
    ("**/", "/b/a", False, True),
    ("***", "/a", False, True),
    # '?' is one character, never '/'
    ("/etc/host?", "/etc/hosts", False, True),
    ("/etc/host?", "/etc/host", False, False),
    ("/etc/host?", "/etc/hostsx", False, False),
    ("/a?b", "/a/b", False, False),
    # [..] classes: ranges, negation (! and ^), POSIX names, never '/'
    ("/v/[a-c]*", "/v/apt", False, True),
    ("/v/[a-c]*", "/v/dpkg.log", False, False),
    ("/v/[!a-c]*", "/v/dpkg.log", False, True),
    ("/v/[^a-c]*", "/v/apt", False, False),
    ("/v/x[[:digit:]]", "/v/x7", False, True),
    ("/v/x[[:digit:]]", "/v/xa", False, False),
    ("/v/x[]]", "/v/x]", False, True),
    ("/a[/]b", "/a/b", False, False),
    # a backslash quotes a wildcard
    ("/a\\*b", "/a*b", False, True),
    ("/a\\*b", "/axb", False, False),
    ("/a\\b", "/a\\b", False, True),  # no wildcard: the backslash is a character
    ("/a\\b", "/ab", False, False),
    # a trailing '/': directories only (and so their contents)
    ("cache/", "/var/cache", True, True),
    ("cache/", "/var/cache/apt/x", False, True),
    ("cache/", "/x/cache", False, False),
    ("lost+found/", "/home/lost+found", True, True),
    ("lost+found/", "/home/lost+found", False, False),
    # d/* and d/**: the contents, not d; d/***: both
    ("/var/log/*", "/var/log", True, False),
    ("/var/log/*", "/var/log/syslog", False, True),
    ("/var/log/*", "/var/log/apt/history.log", False, True),
    ("/var/log/**", "/var/log", True, False),
    ("/var/log/**", "/var/log/apt/history.log", False, True),
    ("/var/log/***", "/var/log", True, True),
    ("/var/log/***", "/var/log/apt/history.log", False, True),
    ("/var/log/***", "/var/log", False, False),
    ("/var/log/***", "/var/logs", True, False),
    # an excluded directory hides all below it
    ("/home", "/home/u/f", False, True),
    ("/var/lib/cloud/instance*", "/var/lib/cloud/instances/i-1/x", False, True),
    ("/var/lib/cloud/instance*", "/var/lib/cloud/seed/x", False, False),
    ("/dev/*", "/dev", True, False),
    ("/dev/*", "/dev/pts/0", False, True),
]


@pytest.mark.parametrize("pattern,path,is_dir,expected", TABLE)
def test_rsync_rules(pattern, path, is_dir, expected):
    assert Patterns([pattern]).matches(path, is_dir) is expected


def test_one_list_is_every_pattern():
    p = Patterns(["# a comment", "", "   ", "/etc/fstab", "lost+found/", "; also a comment"])
    assert p.lines == ("/etc/fstab", "lost+found/")
    assert p.matches("/etc/fstab", False) and p.matches("/x/lost+found/y", False)
    assert not p.matches("/etc/hosts", False)
    assert not p.matches("/", True) and not Patterns(["/*", "***"]).matches("/", True)
    assert not Patterns([]).matches("/etc/fstab", False)


def test_classify_excluded_first():
    r = Rules(Patterns(["/etc/fstab", "/var/log/*"]), Patterns(["/etc/fstab", "/etc/hostname"]))
    assert r.classify("/etc/fstab", False) == "excluded"
    assert r.classify("/etc/hostname", False) == "identity"
    assert r.classify("/var/log/syslog", False) == "excluded"
    assert r.classify("/etc/hosts", False) is None


def test_speed_a_few_microseconds(tmp_path):
    """drift classifies ~14,000 paths: the real lists stay at a few µs a path (measured ~1.3 µs
    per Patterns.matches here; the bound is loose for a busy machine)."""
    root = build(tmp_path / "vm", "debian12")
    rules = excludes.rules_for(root, None, detect(Guest(root)), nameservers_given=True)
    paths = [(f"/usr/share/doc/pkg{i}/sub{i % 7}/file{i}.txt", i % 5 == 0) for i in range(14000)]
    t = time.perf_counter()
    for p, d in paths:
        rules.classify(p, d)
    assert (time.perf_counter() - t) / len(paths) < 30e-6


# -- SystemImager's updateclient list -----------------------------------------------------
IMAGE_LIST = "# mine\n/srv/data/*\n  /var/cache/*\n*/.journal\nvar/tmp\n/srv/data/*\n"
VM_LIST = "/opt/vm-only/*\n"


def _with_list(root, text):
    return write(root, {excludes.SI_EXCLUDE: text} if text is not None else {"etc/hostname": "x\n"})


def test_si_list_prefers_the_new_image(tmp_path):
    image, vm = _with_list(tmp_path / "img", IMAGE_LIST), _with_list(tmp_path / "vm", VM_LIST)
    assert excludes.si_list(image, vm) == ["/srv/data/*", "/var/cache/*"]


def test_si_list_else_the_vms_copy(tmp_path):
    image, vm = _with_list(tmp_path / "img", None), _with_list(tmp_path / "vm", VM_LIST)
    assert excludes.si_list(image, vm) == ["/opt/vm-only/*"]
    assert excludes.si_list(None, vm) == ["/opt/vm-only/*"]


def test_si_list_else_systemimagers_default(tmp_path):
    image, vm = _with_list(tmp_path / "img", None), _with_list(tmp_path / "vm", None)
    got = excludes.si_list(image, vm)
    assert got == excludes.si_list(None, None)
    assert got[:3] == ["/etc/mtab", "/proc/*", "/sys/*"] and got[-1] == "/tmp/*" and "/home/*" in got
    assert "*/.journal" not in got and len(got) == 31  # §4.2's 32 lines, the unanchored one never used


def test_si_list_empty_file_in_image_wins(tmp_path):
    image, vm = _with_list(tmp_path / "img", "# nothing\n"), _with_list(tmp_path / "vm", VM_LIST)
    assert excludes.si_list(image, vm) == []


def test_si_list_symlinked_or_unreadable_file_is_absent(tmp_path):
    image = _with_list(tmp_path / "img", None)
    write(image, {"etc/systemimager/real": IMAGE_LIST})
    os.symlink("real", os.path.join(image, excludes.SI_EXCLUDE))  # inside the guest, still refused
    vm = _with_list(tmp_path / "vm", None)
    os.makedirs(os.path.join(vm, excludes.SI_EXCLUDE))  # a directory: unreadable as a list
    assert excludes.si_list(image, vm) == excludes.si_list(None, None)
    os.symlink("/etc/passwd", os.path.join(tmp_path, "out"))
    os.rename(os.path.join(tmp_path, "out"), os.path.join(image, "etc/systemimager/x"))
    assert excludes.si_list(image, None) == excludes.si_list(None, None)


# -- non-local mounts ------------------------------------------------------------------
FSTAB = """# /etc/fstab
UUID=1 / ext4 defaults 0 1
UUID=2 /data xfs defaults 0 2
UUID=3 none swap sw 0 0
proc /proc proc defaults 0 0
nfs01:/home /home nfs defaults 0 0
//srv/share /mnt/share cifs credentials=/root/c 0 0
tmpfs /dev/shm tmpfs defaults 0 0
/dev/sr0 /media/cdrom0 udf,iso9660 user,noauto 0 0
/dev/sdb1 /mnt/usb vfat,msdos noauto 0 0
/dev/sdd1 /mnt/either ext4,ntfs noauto 0 0
nfs02:/x /srv/my\\040share nfs4 ro 0 0
nfs03:/y /srv/odd[1]* nfs ro 0 0
nfs04:/ / nfs defaults 0 0
garbage-without-fields
/dev/sdc1 /mnt/two
"""


def test_nonlocal_mounts(tmp_path):
    vm = write(tmp_path / "vm", {"etc/fstab": FSTAB})
    got = excludes.nonlocal_mounts(vm)
    assert got == ["/proc/*", "/home/*", "/mnt/share/*", "/dev/shm/*", "/media/cdrom0/*",
                   "/mnt/either/*", "/srv/my share/*", "/srv/odd\\[1]\\*/*"]
    p = Patterns(got)
    assert p.matches("/srv/odd[1]*/f", False) and not p.matches("/srv/odd1x/f", False)
    assert p.matches("/home/u/f", False) and not p.matches("/home", True) and not p.matches("/data/f", False)


def test_a_guest_mount_point_cannot_start_a_filter_rule(tmp_path):
    """fstab's octal escapes decode to a newline: one rule per line to rsync, a bare "!" would clear
    the site's getimage.exclude and si-xen's own exclusions. Such a mount point is left out."""
    vm = write(tmp_path / "vm", {"etc/fstab": "nfs:/x /x\\012!\\012/y nfs ro 0 0\nnfs:/z /mnt/ok nfs ro 0 0\n"})
    got = excludes.nonlocal_mounts(vm)
    assert got == ["/mnt/ok/*"] and not any("\n" in p for p in got)


def test_nonlocal_mounts_no_fstab(tmp_path):
    assert excludes.nonlocal_mounts(write(tmp_path / "vm", {"etc/hostname": "x\n"})) == []


# -- identity ------------------------------------------------------------------------------
# an oracle written apart from the data: what makes a VM itself, on every family
ORACLE = re.compile(r"""^/(
    etc/ssh/ssh_host_[^/]+ | etc/(machine-id|fstab|adjtime|krb5\.keytab) | var/lib/dbus/machine-id
  | var/lib/(systemd/|urandom/|misc/)?random-seed | boot/grub/device\.map
  | var/lib/(dhcp|dhcp3|dhclient|dhcpcd|dhcpcd5)/[^/]*\.lease[^/]* | var/lib/NetworkManager/[^/]*\.lease
  | var/lib/wicked/[^/]+ | etc/udev/rules\.d/(70-persistent-net|z25_persistent-net|30-net_persistent_names)\.rules
  | var/lib/si-xen/.+ | etc/systemimager/IMAGE_LAST_SYNCED_TO | var/lib/cloud/(instances?|data|sem)(/.*)? | var/lib/cloud/seed/nocloud/[^/]+
  | etc/lvm/(backup|archive)/[^/]+ | etc/network/interfaces | etc/network/interfaces\.d/[^/]+
  | etc/NetworkManager/system-connections/[^/]+ | etc/systemd/network/[^/]+\.(network|netdev|link)
  | etc/netplan/[^/]+\.yaml | etc/sysconfig/network-scripts/(ifcfg|route|route6)-[^/]+
  | etc/sysconfig/network/(ifcfg-[^/]+|ifroute-[^/]+|routes)
)$""", re.X)
HOSTNAME_FILES = {"debian": {"/etc/hostname", "/etc/mailname"}, "unknown": {"/etc/hostname", "/etc/mailname"},
                  "centos5": {"/etc/sysconfig/network"}, "centos6": {"/etc/sysconfig/network"},
                  "redhat": {"/etc/hostname", "/etc/sysconfig/network"}, "opensuse103": {"/etc/HOSTNAME"},
                  "suse": {"/etc/hostname", "/etc/HOSTNAME"}}
# what every family's rules see, present in the tree or not
EXTRA = ["/etc/network/interfaces.d/eth1", "/etc/netplan/01-netcfg.yaml", "/etc/netplan/README",
         "/etc/NetworkManager/system-connections/ens4.nmconnection", "/etc/NetworkManager/NetworkManager.conf",
         "/etc/systemd/network/10-eth0.network", "/etc/systemd/network/10-eth0.netdev",
         "/etc/systemd/network/10-eth0.link", "/etc/systemd/networkd.conf",
         "/etc/sysconfig/network-scripts/route-eth0", "/etc/sysconfig/network-scripts/route6-eth0",
         "/etc/sysconfig/network-scripts/ifup-eth", "/etc/sysconfig/network/ifroute-eth0",
         "/etc/sysconfig/network/routes", "/etc/sysconfig/network/config", "/var/lib/wicked/lease-eth0-dhcp-ipv4.xml",
         "/var/lib/dhcpcd/eth0.lease", "/var/lib/NetworkManager/internal-x-ens3.lease", "/var/lib/NetworkManager/timestamps",
         "/var/lib/misc/random-seed", "/var/lib/si-xen/golden/etc/hosts", "/var/lib/cloud/instance/obj.pkl",
         "/var/lib/cloud/instances/i-1/sem/x", "/var/lib/cloud/seed/nocloud/meta-data",
         "/var/lib/cloud/data/instance-id", "/var/lib/cloud/data/previous-instance-id", "/var/lib/cloud/database",
         "/var/lib/cloud/sem/config_scripts_per_once.once", "/var/lib/cloud/scripts/per-boot/site.sh", "/etc/lvm/backup/vg0",
         "/etc/lvm/lvm.conf", "/etc/krb5.keytab", "/etc/krb5.conf", "/etc/adjtime", "/etc/hosts", "/etc/issue",
         "/etc/systemimager/IMAGE_LAST_SYNCED_TO", "/etc/systemimager/updateclient.local.exclude",
         "/boot/grub/device.map", "/boot/grub/grub.cfg", "/etc/ssh/sshd_config", "/etc/ssh/ssh_config",
         "/usr/bin/ssh", "/etc/hostname", "/etc/HOSTNAME", "/etc/mailname", "/etc/resolv.conf"]


def _hostname_files(name: str, family: str) -> set[str]:
    return HOSTNAME_FILES.get(name) or HOSTNAME_FILES[family]


@pytest.mark.parametrize("name", sorted(TREES))
@pytest.mark.parametrize("nameservers", [False, True])
def test_identity_every_family(tmp_path, name, nameservers):
    root = build(tmp_path / "vm", name)
    osinfo = detect(Guest(root))
    ident = Patterns(excludes.identity_patterns(osinfo, root, nameservers))
    paths = sorted({f"/{p}" for p in TREES[name]} | set(EXTRA))
    mine = _hostname_files(name, osinfo.family) | ({"/etc/resolv.conf"} if nameservers else set())
    # a hostname file's name hides what is below it too (RH's sysconfig/network: SUSE's dir)
    wrong = [(p, ident.matches(p, False)) for p in paths if ident.matches(p, False) != bool(
        ORACLE.match(p) or any(p == m or p.startswith(m + "/") for m in mine))]
    assert wrong == []
    assert not ident.matches("/var/lib/si-xen", True) and not ident.matches("/etc/systemd/network", True)


def test_identity_host_keys_of_sshd_config(tmp_path):
    conf = ("HostKey /etc/ssh/keys/host_ed25519\nHostKey ssh_rsa_local\nHostKey ~/k\n"
            "Match user x\nHostKey /never/read\n")
    root = build(tmp_path / "vm", "debian12")
    write(root, {"etc/ssh/sshd_config": conf})
    ident = Patterns(excludes.identity_patterns(detect(Guest(root)), root))
    for p in ("/etc/ssh/keys/host_ed25519", "/etc/ssh/keys/host_ed25519.pub", "/etc/ssh/ssh_rsa_local",
              "/etc/ssh/ssh_rsa_local.pub", "/etc/ssh/ssh_host_ed25519_key"):
        assert ident.matches(p, False), p
    assert not ident.matches("/never/read", False) and not ident.matches("/etc/ssh/keys/other", False)


def test_identity_host_key_names_are_literal(tmp_path):
    root = build(tmp_path / "vm", "debian12")
    write(root, {"etc/ssh/sshd_config": 'HostKey "/etc/ssh/k[1]*_ed25519"\nHostKey /etc/ssh/b\\s_rsa\n'})
    ident = Patterns(excludes.identity_patterns(detect(Guest(root)), root))
    assert ident.matches("/etc/ssh/k[1]*_ed25519", False) and ident.matches("/etc/ssh/k[1]*_ed25519.pub", False)
    assert not ident.matches("/etc/ssh/k1x_ed25519", False)
    assert ident.matches("/etc/ssh/bs_rsa", False)  # sshd's own quoting: b\\s is "bs"
    for name in ("/k/a\\b", "/k/a\\b*[x]?"):  # a backslash stays literal, quoted or not
        assert Patterns([excludes._literal(name)]).matches(name, False)
        assert not Patterns([excludes._literal(name)]).matches(name.replace("\\", "x"), False)


def test_identity_broken_sshd_config_still_lists_the_rest(tmp_path):
    root = build(tmp_path / "vm", "debian12")
    os.symlink("ssh", os.path.join(root, "etc/loop"))
    os.rename(os.path.join(root, "etc/ssh"), os.path.join(root, "etc/ssh.real"))
    os.symlink("loop", os.path.join(root, "etc/ssh"))  # /etc/ssh -> loop -> ssh: a link loop
    got = excludes.identity_patterns(detect(Guest(root)), root)
    assert "/etc/ssh/ssh_host_*" in got and "/etc/machine-id" in got


def test_every_stack_has_configs():
    from si_xen.distros.table import STACKS
    assert all(st.configs for st in STACKS.values())


# -- the rules of one VM -----------------------------------------------------------------
def test_rules_for(tmp_path):
    vm = build(tmp_path / "vm", "debian12")
    write(vm, {"etc/fstab": "UUID=1 / ext4 defaults 0 1\nnfs01:/home /home nfs defaults 0 0\n"})
    image = write(tmp_path / "img", {excludes.SI_EXCLUDE: "/srv/data/*\n"})
    r = excludes.rules_for(vm, image, detect(Guest(vm)))
    assert r.classify("/srv/data/db", False) == "excluded"  # the image's list
    assert r.classify("/var/log/syslog", False) is None  # not the default list: the image has its own
    assert r.classify("/home/u/f", False) == "excluded"  # the VM's nfs mount
    assert r.classify("/dev/null", False) == "excluded" and r.classify("/dev", True) is None
    assert r.classify("/proc/1/stat", False) == "excluded" and r.classify("/x/lost+found", True) == "excluded"
    assert r.classify("/etc/system-id", False) == "excluded"
    assert r.classify("/etc/ssh/ssh_host_rsa_key", False) == "identity"
    assert r.classify("/etc/resolv.conf", False) is None
    assert excludes.rules_for(vm, image, detect(Guest(vm)), True).classify("/etc/resolv.conf", False) == "identity"
    r = excludes.rules_for(vm, None, detect(Guest(vm)))
    assert r.classify("/var/log/syslog", False) == "excluded" and r.classify("/etc/fstab", False) == "excluded"


def test_an_update_never_overwrites_cloud_inits_run_of_the_vm(tmp_path):
    """An image that carries the golden client's cloud-init run (its instance-id, its once-only
    semaphores): an update plans no fetch and no delete there, so the VM's own run stands and
    cloud-init does not take the VM for a new instance."""
    from si_xen.updateplan import plan_update

    vm = build(tmp_path / "vm", "debian12")
    rules = excludes.rules_for(vm, None, detect(Guest(vm)))
    d, f = (0o40755, 0, 0, 4096, 1, 0, ""), (0o100644, 0, 0, 9, 1, 0, "")
    dirs = {p: d for p in ("/var", "/var/lib", "/var/lib/cloud", "/var/lib/cloud/data", "/var/lib/cloud/sem",
                           "/var/lib/cloud/instances", "/var/lib/cloud/instances/golden")}
    run = {"/var/lib/cloud/data/instance-id": f, "/var/lib/cloud/sem/config_scripts_per_once.once": f,
           "/var/lib/cloud/instances/golden/obj.pkl": f, "/var/lib/cloud/instance": (0o120777, 0, 0, 9, 1, 0, "x")}
    image = {**dirs, **run}
    mine = {**{p: d for p in dirs if "golden" not in p}, "/var/lib/cloud/instances/vm1": d,
            "/var/lib/cloud/data/instance-id": f[:3] + (12, 2) + f[5:], "/var/lib/cloud/sem/config_x.once": f}
    for mode in ("image", "local"):
        c = plan_update(image, image, mine, rules.classify, {}, {}, (), delete=mode)
        touched = [p for p in (*c.fetch, *c.delete) if p.startswith("/var/lib/cloud/")]
        assert touched == [], (mode, touched)
    # the image's own NoCloud seed (a golden's) changed between generations: the VM's seed, which the
    # cloudinit fixup wrote (its instance-id), is neither fetched over nor deleted, nor the image's vendor-data added
    seed = "/var/lib/cloud/seed/nocloud"
    sdirs = {p: d for p in ("/var/lib/cloud/seed", seed)}
    old = {**image, **sdirs, f"{seed}/meta-data": f, f"{seed}/user-data": f}
    new = {**old, f"{seed}/meta-data": f[:3] + (30,) + f[4:], f"{seed}/vendor-data": f}
    vm_seed = {**mine, **sdirs, f"{seed}/meta-data": f[:3] + (70,) + f[4:], f"{seed}/user-data": f,
               f"{seed}/network-config": f}
    owned = {"cloudinit": (f"{seed}/meta-data", f"{seed}/user-data", f"{seed}/network-config")}
    for mode in ("image", "local"):
        c = plan_update(old, new, vm_seed, rules.classify, owned, {}, ("cloudinit",), delete=mode)
        touched = [p for p in (*c.fetch, *c.delete) if p.startswith("/var/lib/cloud/")]
        assert touched == [], (mode, touched)
    assert rules.classify("/var/lib/cloud/scripts/per-boot/site.sh", False) is None  # the image's own: updated


@pytest.mark.parametrize("name", sorted(TREES))
def test_configs_cover_what_claims_finds(tmp_path, name):
    """Every file the network fixup takes for a stack's NIC config is in that stack's configs."""
    from si_xen.distros import stacks
    from si_xen.distros.table import STACKS
    root = build(tmp_path / "vm", name)
    write(root, {"etc/systemd/network/10-eth0.network": "[Match]\nName=eth0\n", "etc/systemd/network/br0.netdev": "",
                 "etc/network/interfaces.d/eth1": "auto eth1\niface eth1 inet dhcp\n"})
    for stack, st in STACKS.items():
        configs = Patterns(f"/{c}" for c in st.configs)
        found = stacks.claims(Guest(root), stack, golden=False)
        assert [p for p in found if not configs.matches(f"/{p}", False)] == [], stack
