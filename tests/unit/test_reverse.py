"""capture/reverse.py on every family's tree: the real fixups run on a copy of an image (as a deploy
does, the owned paths and their facts recorded), then reverse + strip_identity make it the image
again, minus identity, entry by entry (mode, owner, mtime, content, link target). Each fixup's
reversal is needed: with its owned paths left out of the record, that comparison fails."""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass, replace

import pytest

from si_xen import boot
from si_xen.capture.identity import strip_identity
from si_xen.capture.reverse import REVERSAL, reverse
from si_xen.fixups import FIXUPS, run_all
from si_xen.fixups.aside import MANIFEST
from si_xen.guestfs import Guest, RecordingGuest
from si_xen.image import survey
from si_xen.record import VmRecord
from tests.unit import fakeimage, fakekeygen
from tests.unit.fixups.conftest import DHCP, STATIC
from tests.unit.fixups.trees import TREES, build, write


@pytest.fixture(autouse=True)
def keygen(fp, monkeypatch):
    fakekeygen.register(fp, monkeypatch)
    return fp


def quiet(_msg):
    pass


@dataclass
class Made:
    image: str
    vm: str
    facts_dir: str
    rec: VmRecord


def make_vm(tmp_path, image: str, spec=STATIC, boot_step: bool = False, links=()) -> Made:
    """A VM of ``image`` as a deploy makes it: the generation's manifest saved, the tree copied
    (mtimes kept, the hard ``links`` (name, other name) made again as rsync -H does), the fixups
    (and the boot step) run, what they touched recorded with its facts."""
    facts_dir = str(tmp_path / "facts")
    fp = survey.survey(image, facts_dir).fingerprint
    vm = str(tmp_path / "vm")
    shutil.copytree(image, vm, symlinks=True)
    for a, b in links:
        os.unlink(os.path.join(vm, b))
        os.link(os.path.join(vm, a), os.path.join(vm, b))
    owned = {r[0]: r.touched for r in run_all(vm, spec, log=quiet) if r.touched}
    if boot_step:
        g = RecordingGuest(vm)
        boot.write_grub_cfg(g, boot.find_kernel(g), "xvda2", False, "Debian (si-xen)")
        owned["boot"] = tuple(sorted(g.touched))
    g = Guest(vm)
    facts = {p: g.facts(p) for paths in owned.values() for p in paths}
    rec = VmRecord("vm1", "golden01", image_path=image, image_fingerprint=fp, owned=owned, owned_facts=facts)
    return Made(image, vm, facts_dir, rec)


# a golden client's MAC-bound .link file: what the macs fixup keeps aside (the trees have none)
LINK = {"etc/systemd/network/10-golden.link": "[Match]\nMACAddress=00:1a:64:aa:bb:cc\n[Link]\nName=eth0\n"}


def family(tmp_path, name: str, spec=STATIC, extra: dict | None = None) -> Made:
    return make_vm(tmp_path, write(tmp_path / "image", {**TREES[name], **(extra or {})}), spec)


def supplied_kernel(tmp_path):
    """A spec booting a dom0 kernel whose modules the kernel fixup copies in (a tree it owns)."""
    mods = tmp_path / "mods" / "6.1.0-9"
    (mods / "kernel").mkdir(parents=True)
    (mods / "kernel" / "xen-blkfront.ko").write_text("ko")
    return replace(STATIC, kernel="/boot/vmlinuz-6.1.0-9", modules=str(mods))


def entries(root: str) -> dict[str, tuple]:
    """Every entry as rsync -a -c compares it: type and mode, owner, mtime, content or target."""
    out = {}
    for d, dirs, files in os.walk(root):
        for n in ["."] + dirs + files if d == root else dirs + files:
            p = os.path.normpath(os.path.join(d, n))
            st = os.lstat(p)
            body = None
            if stat.S_ISLNK(st.st_mode):
                body = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    body = f.read()
            out["/" + os.path.relpath(p, root).lstrip(".")] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, body)
    return out


def differences(m: Made, rec: VmRecord | None = None) -> tuple[set[str], list[str]]:
    """Reverse and strip the VM; strip a copy of the image too; the paths that differ (a
    directory holding identity the strip removed is compared without its mtime), and the list."""
    said = []
    notes = reverse(m.vm, rec or m.rec, m.facts_dir, said.append)
    assert len(said) == 1 and said[0].startswith("reversed si-xen's changes")
    expected = m.vm + ".expected"
    shutil.copytree(m.image, expected, symlinks=True)
    gone = {line.split(" ", 1)[1].split(" ")[0] for line in strip_identity(m.vm) + strip_identity(expected)}
    near = {os.path.dirname(p) for p in gone}
    a, b = entries(expected), entries(m.vm)
    diff = set()
    for p in a.keys() | b.keys():
        x, y = a.get(p), b.get(p)
        same = x and y and x[:3] == y[:3] and (p in near and stat.S_ISDIR(x[0]) or p in gone and x[4] == y[4])
        if x != y and not same:  # an emptied file, and a directory the strip changed: their mtime is now
            diff.add(p)
    return diff, notes


@pytest.mark.parametrize("name", sorted(TREES))
@pytest.mark.parametrize("spec", [STATIC, DHCP, "kernel"], ids=["static", "dhcp", "supplied-kernel"])
def test_a_vm_reversed_is_its_image_minus_identity(tmp_path, name, spec):
    m = family(tmp_path, name, supplied_kernel(tmp_path) if spec == "kernel" else spec, LINK)
    assert m.rec.owned and os.path.exists(os.path.join(m.vm, MANIFEST))
    diff, notes = differences(m)
    assert diff == set() and notes == []
    assert not os.path.lexists(os.path.join(m.vm, "var/lib/si-xen"))


def _owned_by(rec: VmRecord, name: str) -> set[str]:
    paths = set(rec.owned[name])
    return paths | {os.path.dirname(p.rstrip("/")) for p in paths}


def _forget_kept(vm: str, paths) -> None:
    """The golden copies a fixup kept aside (its reversal too) left out of the aside MANIFEST."""
    path = os.path.join(vm, MANIFEST)
    if os.path.exists(path):
        with open(path) as f:
            lines = [ln for ln in f if ln.count("\t") < 2 or ln.split("\t")[1] not in paths]
        with open(path, "w") as f:
            f.writelines(lines)


@pytest.mark.parametrize("fixup", [f.name for f in FIXUPS])
def test_each_fixups_reversal_is_needed(tmp_path, fixup):
    """Its owned paths left out of the record, the comparison fails on some family (and only on
    what it wrote): no fixup's changes are undone by chance."""
    failed = []
    spec = supplied_kernel(tmp_path) if fixup == "kernel" else STATIC
    for name in sorted(TREES):
        m = family(tmp_path / name, name, spec, LINK)
        if fixup not in m.rec.owned:
            continue
        rec = replace(m.rec, owned={k: v for k, v in m.rec.owned.items() if k != fixup})
        _forget_kept(m.vm, m.rec.owned[fixup])
        diff, _ = differences(m, rec)
        mine = _owned_by(m.rec, fixup)
        trees = tuple(p for p in mine if p.endswith("/"))
        others = set().union(*(_owned_by(rec, k) for k in rec.owned))
        assert {p for p in diff - mine - others if not (p + "/").startswith(trees)} == set(), name
        if diff:
            failed.append(name)
            break  # proven; the other trees only cost time
    assert failed, f"removing fixup {fixup}'s reversal changed nothing on any tree"


def test_the_boot_steps_grub_cfg_is_the_images_again(tmp_path):
    image = fakeimage.make(tmp_path / "image")
    os.makedirs(os.path.join(image, "boot/grub"))
    with open(os.path.join(image, "boot/grub/grub.cfg"), "w") as f:
        f.write("menuentry 'golden' {\n\tlinux /boot/vmlinuz root=/dev/sda1\n}\n")
    m = make_vm(tmp_path, image, boot_step=True)
    assert set(m.rec.owned["boot"]) == {"/boot/grub/grub.cfg", "/boot/grub/grub.cfg.si-xen-orig"}
    diff, notes = differences(m)
    assert diff == set() and notes == []
    without = make_vm(tmp_path / "again", image, boot_step=True)
    rec = replace(without.rec, owned={k: v for k, v in without.rec.owned.items() if k != "boot"})
    assert "/boot/grub/grub.cfg.si-xen-orig" in differences(without, rec)[0]  # grub.cfg: the fixups' too


def test_every_fixup_says_how_it_is_reversed():
    assert set(REVERSAL) == {f.name for f in FIXUPS} | {"boot"}


def test_a_file_the_vm_changed_after_the_deploy_is_kept_and_listed(tmp_path):
    m = family(tmp_path, "debian12")
    hosts = os.path.join(m.vm, "etc/hosts")
    with open(hosts, "a") as f:
        f.write("10.9.9.9\tbackup\n")
    os.utime(hosts, ns=(0, os.stat(hosts).st_mtime_ns + 5 * 10**9))  # later than si-xen's write
    diff, notes = differences(m)
    assert diff == {"/etc/hosts"}
    assert notes == ["/etc/hosts: changed in the VM since si-xen wrote it (fixup hostname); kept as the VM has it"]
    with open(hosts) as f:
        assert f.read().endswith("10.9.9.9\tbackup\n")


def test_an_image_changed_since_gives_the_golden_copies_and_lists_the_rest(tmp_path):
    m = family(tmp_path, "debian4")
    for path, text in (("etc/network/interfaces", "# new golden\n"), ("etc/inittab", "id:3:initdefault:\n")):
        with open(os.path.join(m.image, path), "w") as f:
            f.write(text)
    diff, notes = differences(m)
    assert notes == ["/etc/inittab: the image no longer holds the version the VM was made from; "
                     "left as si-xen wrote it (fixup console)"]
    with open(os.path.join(m.vm, "etc/network/interfaces")) as f:
        assert f.read() == TREES["debian4"]["etc/network/interfaces"]  # the golden copy kept in the VM
    assert diff == {"/etc/inittab", "/etc/network/interfaces"}  # the image's now; and the copy's mtime


def test_without_the_image_the_network_comes_back_from_the_vms_golden_copies(tmp_path):
    m = family(tmp_path, "centos7")
    gone = str(tmp_path / "gone")
    os.rename(m.image, gone)
    notes = reverse(m.vm, m.rec, m.facts_dir, quiet)
    assert notes and all("the image" in n and "is gone" in n for n in notes)
    with open(os.path.join(m.vm, "etc/sysconfig/network-scripts/ifcfg-eth0")) as f:
        assert "IPADDR=10.1.2.3" in f.read()
    assert not os.path.exists(os.path.join(m.vm, "etc/sysconfig/network-scripts/ifcfg-eth0.si-xen"))
    assert not os.path.lexists(os.path.join(m.vm, "var/lib/si-xen"))
    assert not any(n.startswith("/etc/sysconfig/network-scripts/") for n in notes)


def test_a_record_without_owned_paths_restores_the_golden_network_and_says_so(tmp_path):
    m = family(tmp_path, "alma9")
    rec = replace(m.rec, owned={}, owned_facts={})
    notes = reverse(m.vm, rec, m.facts_dir, quiet)
    assert len(notes) == 1 and "names no file si-xen wrote" in notes[0]
    nm = "etc/NetworkManager/system-connections/ens3.nmconnection"
    with open(os.path.join(m.vm, nm)) as f, open(os.path.join(m.image, nm)) as g:
        assert f.read() == g.read()


def test_a_hostile_copy_cannot_lead_reverse_out_of_the_tree(tmp_path):
    m = family(tmp_path, "debian12")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "hosts").write_text("dom0's\n")
    os.unlink(os.path.join(m.vm, "etc/hosts"))
    os.symlink(str(outside / "hosts"), os.path.join(m.vm, "etc/hosts"))  # planted after the deploy
    shutil.rmtree(os.path.join(m.vm, "var/lib/si-xen"))
    os.symlink(str(outside), os.path.join(m.vm, "var/lib/si-xen"))
    reverse(m.vm, m.rec, m.facts_dir, quiet)
    strip_identity(m.vm)
    assert (outside / "hosts").read_text() == "dom0's\n" and sorted(os.listdir(outside)) == ["hosts"]
    assert not os.path.lexists(os.path.join(m.vm, "var/lib/si-xen"))


def test_strip_identity_removes_the_machine_and_keeps_systemds_empty_machine_id(tmp_path):
    root = build(tmp_path / "t", "debian12")
    extra = {"var/lib/cloud/instance": None, "var/lib/cloud/instances/i-1/user-data.txt": "x",
             "var/lib/cloud/seed/nocloud/meta-data": "keep", "etc/ssh/keys/host_ed25519": "k",
             "etc/udev/rules.d/70-persistent-net.rules": "x", "var/lib/dbus/machine-id": "abc\n",
             "var/lib/systemd/credential.secret": "s"}
    for p, text in extra.items():
        os.makedirs(os.path.dirname(os.path.join(root, p)), exist_ok=True)
        if text is None:
            os.symlink("/var/lib/cloud/instances/i-1", os.path.join(root, p))
        else:
            with open(os.path.join(root, p), "w") as f:
                f.write(text)
    with open(os.path.join(root, "etc/ssh/sshd_config"), "w") as f:
        f.write("HostKey /etc/ssh/keys/host_ed25519\n")
    mid = os.path.join(root, "etc/machine-id")
    os.chmod(mid, 0o444)
    os.link(mid, os.path.join(root, "published-machine-id"))  # --update: a hard link into the published image
    done = strip_identity(root)
    assert os.path.getsize(mid) == 0 and stat.S_IMODE(os.stat(mid).st_mode) == 0o444
    assert os.path.getsize(os.path.join(root, "published-machine-id")) > 0, "the published image's file untouched"
    for p in ("etc/ssh/ssh_host_rsa_key", "etc/ssh/ssh_host_ed25519_key.pub", "etc/ssh/keys/host_ed25519",
              "var/lib/systemd/random-seed", "var/lib/dhcp/dhclient.eth0.leases", "var/lib/cloud/instance",
              "var/lib/cloud/instances", "etc/udev/rules.d/70-persistent-net.rules", "var/lib/dbus/machine-id",
              "var/lib/systemd/credential.secret"):
        assert not os.path.lexists(os.path.join(root, p)), p
        assert f"removed /{p}" in done
    assert "emptied /etc/machine-id" in done
    assert os.path.exists(os.path.join(root, "var/lib/cloud/seed/nocloud/meta-data"))
    assert os.path.exists(os.path.join(root, "etc/ssh/sshd_config"))
    assert strip_identity(root) == []  # a second run: nothing left


def test_a_capture_removes_the_cloud_init_run_an_update_keeps(tmp_path):
    """What an update keeps as the VM's own cloud-init run (excludes.IDENTITY: instance-id, semaphores,
    instance data) is one machine's: a captured image never carries it (cloud-init would take each
    machine installed from it for that VM, and skip its per-instance modules). Its seed stays."""
    from si_xen import excludes
    from si_xen.capture.identity import is_identity

    cloud = [p.lstrip("/") for p in excludes.IDENTITY if p.startswith("/var/lib/cloud/") and "/seed/" not in p]
    assert {"var/lib/cloud/data", "var/lib/cloud/sem", "var/lib/cloud/instance", "var/lib/cloud/instances"} <= set(cloud)
    root = build(tmp_path / "t", "debian12")
    for p in cloud:
        os.makedirs(os.path.join(root, p))
        with open(os.path.join(root, p, "instance-id"), "w") as f:
            f.write("vm1-iid\n")
    os.makedirs(os.path.join(root, "var/lib/cloud/seed/nocloud"))
    with open(os.path.join(root, "var/lib/cloud/seed/nocloud/meta-data"), "w") as f:
        f.write("instance-id: site\n")
    done = strip_identity(root)
    for p in cloud:
        assert not os.path.lexists(os.path.join(root, p)) and f"removed /{p}" in done, p
        assert is_identity(f"/{p}/instance-id"), p
    assert os.listdir(os.path.join(root, "var/lib/cloud")) == ["seed"]


def test_a_kernel_or_initramfs_the_vm_made_is_listed(tmp_path):
    m = family(tmp_path, "debian12")
    write(m.vm, {"boot/vmlinuz-6.1.0-99-cloud-amd64": "k", "boot/initrd.img-6.1.0-99-cloud-amd64": "i"})
    config = os.path.join(m.vm, "boot/config-6.1.0-18-amd64")
    os.utime(config, ns=(0, os.stat(config).st_mtime_ns + 10**10))  # not a kernel nor an initramfs
    notes = reverse(m.vm, m.rec, m.facts_dir, quiet)
    assert [n.split(":")[0] for n in notes] == ["/boot/initrd.img-6.1.0-99-cloud-amd64",
                                                "/boot/vmlinuz-6.1.0-99-cloud-amd64"]
    assert all("installed in the VM, not in the image" in n for n in notes)


def test_a_file_hard_linked_in_the_image_is_linked_again(tmp_path):
    image = build(tmp_path / "image", "debian12")
    os.link(os.path.join(image, "etc/hosts"), os.path.join(image, "etc/hosts.golden"))
    m = make_vm(tmp_path, image, links=[("etc/hosts", "etc/hosts.golden")])
    hosts, other = os.path.join(m.vm, "etc/hosts"), os.path.join(m.vm, "etc/hosts.golden")
    assert os.stat(hosts).st_ino != os.stat(other).st_ino  # the hostname fixup's write broke the link
    diff, notes = differences(m)
    assert diff == set() and notes == []
    assert os.stat(hosts).st_ino == os.stat(other).st_ino


def test_what_the_copy_left_out_on_purpose_is_left_alone(tmp_path):
    """getimage.exclude leaves /etc/hostname out of a capture: not brought back, not reported."""
    m = family(tmp_path, "debian12")
    os.unlink(os.path.join(m.vm, "etc/hostname"))
    assert reverse(m.vm, m.rec, m.facts_dir, quiet, excluded=lambda p: p == "/etc/hostname") == []
    assert not os.path.lexists(os.path.join(m.vm, "etc/hostname"))
    again = family(tmp_path / "again", "debian12")
    os.unlink(os.path.join(again.vm, "etc/hostname"))  # without being told: the VM removed it
    assert reverse(again.vm, again.rec, again.facts_dir, quiet) == [
        "/etc/hostname: removed in the VM since si-xen wrote it (fixup hostname); left out"]


def test_without_the_generations_manifest_the_image_as_it_is_now_is_used_and_said(tmp_path):
    m = family(tmp_path, "ubuntu1004")
    shutil.rmtree(m.facts_dir)
    diff, notes = differences(m)
    assert diff == set() and len(notes) == 1 and "is gone" in notes[0] and "as the image" in notes[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="security.* xattrs need root (CI runs the unit tier as root)")
def test_a_restored_file_keeps_its_capability_and_owner(tmp_path):
    """chown drops security.capability: the reversal sets the xattrs after the owner and mode."""
    import struct

    image = build(tmp_path / "image", "debian12")
    hosts = os.path.join(image, "etc/hosts")
    cap = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)  # v2, effective: cap_net_raw, as setcap writes it
    os.chown(hosts, 1000, 1000)
    os.setxattr(hosts, "security.capability", cap)
    m = make_vm(tmp_path, image)
    assert "/etc/hosts" in {p for paths in m.rec.owned.values() for p in paths}, "a fixup rewrote it"
    reverse(m.vm, m.rec, m.facts_dir, quiet)
    back = os.path.join(m.vm, "etc/hosts")
    assert (os.stat(back).st_uid, os.getxattr(back, "security.capability")) == (1000, cap)
