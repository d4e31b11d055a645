"""capture.fromdisk_lvm with LVM and device-mapper faked: the dm tables built from lvs's segments,
LVM's dash doubling in the guest's fstab names, the LV types refused, and every map undone
(on success, on a failure midway, and a dead run's)."""

from __future__ import annotations

import json
import os
from contextlib import ExitStack

import pytest

from si_xen import proc
from si_xen.capture import fromdisk_lvm
from si_xen.capture.fromdisk_lvm import table, volumes
from si_xen.capture.fromdisk_probe import Fs, find, mapper_name, mapping, partitions_named
from si_xen.errors import Fatal

PV = {"/dev/loop3": 2048, "/dev/loop4": 4096}  # pe_start, sectors
EXTENT = 8192  # 4 MiB


def seg(start, size, ranges, kind="linear", stripe=0):
    return {"seg_start": str(start), "seg_size": str(size), "seg_pe_ranges": ranges, "segtype": kind,
            "stripe_size": str(stripe)}


def test_a_linear_lv_in_two_segments_across_two_pvs():
    segs = [seg(16384, 8192, "/dev/loop4:5-5"), seg(0, 16384, "/dev/loop3:2-3")]  # out of order, as lvs may give
    assert table(segs, PV, EXTENT, "vg/root") == ("0 16384 linear /dev/loop3 18432\n"  # 2048 + 2 * 8192
                                                  "16384 8192 linear /dev/loop4 45056\n")  # 4096 + 5 * 8192


def test_a_striped_lv():
    segs = [seg(0, 32768, "/dev/loop3:0-1,/dev/loop4:4-5", "striped", 128)]
    assert table(segs, PV, EXTENT, "vg/data") == "0 32768 striped 2 128 /dev/loop3 2048 /dev/loop4 36864\n"


@pytest.mark.parametrize("kind", ["thin", "thin-pool", "raid1", "raid5", "cache", "mirror", "vdo", "snapshot"])
def test_other_segment_types_refused_naming_the_lv_and_its_type(kind):
    with pytest.raises(Fatal) as e:
        table([seg(0, 8192, "/dev/loop3:0-0", kind)], PV, EXTENT, "vg0/home")
    assert "vg0/home" in str(e.value) and f"type {kind}" in str(e.value)


@pytest.mark.parametrize("ranges", ["[unknown]:0-1", "/dev/sdz1:0-1", ""])
def test_a_pv_not_on_this_disk_refused(ranges):
    with pytest.raises(Fatal, match="physical volume that is not on this disk image"):
        table([seg(0, 8192, ranges)], PV, EXTENT, "vg0/home")


def test_mapper_names_double_dashes():
    assert mapper_name("debian-vg", "root") == "debian--vg-root"
    assert mapper_name("vg0", "my-var-lv") == "vg0-my--var--lv"


LVS = [Fs("/dev/loop2", "LVM2_member", 2), Fs("/dev/loop1", "ext4", 1, "b00b-1"),
       Fs("/dev/mapper/si-xen-ro-7-0", "ext4", 0, "aaaa-0", "rootfs", lv="my-vg/root"),
       Fs("/dev/mapper/si-xen-ro-7-1", "xfs", 0, "bbbb-1", lv="my-vg/var-lv"),
       Fs("/dev/mapper/si-xen-ro-7-2", "swap", 0, "cccc-2", lv="my-vg/swap", size=64 << 20)]


@pytest.mark.parametrize("spec, dev", [
    ("/dev/mapper/my--vg-root", "/dev/mapper/si-xen-ro-7-0"), ("/dev/my-vg/root", "/dev/mapper/si-xen-ro-7-0"),
    ("/dev/mapper/my--vg-var--lv", "/dev/mapper/si-xen-ro-7-1"), ("/dev/my-vg/var-lv", "/dev/mapper/si-xen-ro-7-1"),
    ("UUID=BBBB-1", "/dev/mapper/si-xen-ro-7-1"), ("LABEL=rootfs", "/dev/mapper/si-xen-ro-7-0"),
    ("/dev/mapper/my-vg-root", None), ("/dev/mapper/my-vg-var-lv", None), ("/dev/my--vg/root", None),
    ("/dev/vg0/root", None), ("/dev/mapper/si-xen-ro-7-0", None), ("/dev/sda1", "/dev/loop1")])
def test_the_fstab_names_an_lv_as_lvm_does(spec, dev):
    found = find(spec, LVS, {"a"})
    assert (found.dev if found else None) == dev


def test_lvs_mapped_and_laid_out_as_plain_partitions_after_the_disks_own():
    fstab = ("/dev/mapper/my--vg-root / ext4 defaults 0 1\n/dev/sda1 /boot ext4 defaults 0 2\n"
             "/dev/my-vg/var-lv /var xfs defaults 0 2\n/dev/my-vg/swap none swap sw 0 0\n")
    disks, left = mapping(fstab, LVS, LVS[2])
    assert disks == [(LVS[2].dev, "ext4", "/"), ("/dev/loop1", "ext4", "/boot"), (LVS[3].dev, "xfs", "/var")]
    assert left == []
    layout = partitions_named(fstab, LVS, {dev: mp for dev, _t, mp in disks})
    assert [(n, t, mp) for n, t, mp, _mib in layout] == [(1, "ext4", "/boot"), (2, "ext4", "/"), (3, "xfs", "/var"),
                                                         (4, "swap", "")]
    assert layout[3][3] == 64
    assert "logical volume my-vg/var-lv (xfs)" == LVS[3].named()


# -- volumes(): lvs, pvs, dmsetup and blkid faked ------------------------------------------------

PVS = {"report": [{"pv": [{"pv_name": "/dev/loop2", "vg_name": "vg0", "pe_start": "2048", "vg_extent_size": "8192"}]}]}
SEGS = {"report": [{"seg": [
    {"vg_name": "vg0", "lv_name": "root", "lv_attr": "-wi-------", **seg(0, 16384, "/dev/loop2:0-1")},
    {"vg_name": "vg0", "lv_name": "var", "lv_attr": "-wi-------", **seg(0, 8192, "/dev/loop2:2-2")}]}]}


@pytest.fixture
def lvm(fp, monkeypatch, tmp_path):
    """LVM and device-mapper faked; ``made``: the maps that exist (name: table), nodes in tmp_path."""
    monkeypatch.setattr(fromdisk_lvm, "device_mapper_ok", lambda: True)
    monkeypatch.setattr(proc, "which", lambda p: f"/sbin/{p}")
    monkeypatch.setattr(fromdisk_lvm, "MAPPER", str(tmp_path))
    made: dict[str, str] = {}
    fp.register(["pvs", fp.any()], stdout=json.dumps(PVS), occurrences=10)
    fp.register(["dmsetup", "ls"], stdout="No devices found\n", occurrences=10)
    fp.register(["blkid", "-p", "-o", "export", fp.any()], stdout="TYPE=ext4\nUUID=u1\n", occurrences=10)
    fp.register(["udevadm", "settle", fp.any()], occurrences=10)
    monkeypatch.setattr(fromdisk_lvm, "SYS", str(tmp_path / "sys"))  # nothing holds the loop devices

    def remove(p):
        if p.args[-1].startswith("si-xen-ro-"):
            del made[p.args[-1]]
            os.unlink(tmp_path / p.args[-1])

    fp.register(["dmsetup", "remove", "--retry", fp.any()], callback=remove, occurrences=10)
    return made


def creating(fp, tmp_path, made, fail_at=None, segs=SEGS):
    fp.register(["lvs", fp.any()], stdout=json.dumps(segs))
    calls = []

    def create(p):
        name = p.args[-1]
        if len(calls) == fail_at:
            p.returncode = 1
            return
        calls.append(list(p.args))
        made[name] = None
        (tmp_path / name).touch()

    def stdin(data):
        made[list(made)[-1]] = data.decode() if isinstance(data, bytes) else data

    fp.register(["dmsetup", "create", fp.any()], callback=create, stdin_callable=stdin, occurrences=10)
    return calls


def test_volumes_mapped_read_only_under_our_names_then_removed(lvm, fp, tmp_path):
    calls = creating(fp, tmp_path, lvm)
    with ExitStack() as undo:
        fss = volumes("d.raw", [Fs("/dev/loop2", "LVM2_member", 2)], undo)
        pid = os.getpid()
        assert [(f.dev, f.lv, f.type, f.size) for f in fss] == [
            (str(tmp_path / f"si-xen-ro-{pid}-0"), "vg0/root", "ext4", 16384 * 512),
            (str(tmp_path / f"si-xen-ro-{pid}-1"), "vg0/var", "ext4", 8192 * 512)]
        assert calls == [["dmsetup", "create", "--readonly", f"si-xen-ro-{pid}-0"],
                         ["dmsetup", "create", "--readonly", f"si-xen-ro-{pid}-1"]]
        assert lvm == {f"si-xen-ro-{pid}-0": "0 16384 linear /dev/loop2 2048\n",
                       f"si-xen-ro-{pid}-1": "0 8192 linear /dev/loop2 18432\n"}
    assert lvm == {}
    for argv in fp.calls:
        if argv[0] in ("pvs", "lvs"):  # our loop devices only, nothing written
            assert argv[1:4] == ["--devices", "/dev/loop2", "--readonly"], argv


def test_what_udev_activated_on_our_loop_devices_is_removed_after_our_maps(lvm, fp, tmp_path, monkeypatch):
    """udev's LVM rule may activate the guest's VG by name when the loops appear: its LVs hold our
    loop device (sysfs holders) and are removed, outermost first, after our maps and before the
    loops go; a host device-mapper device not on our loops is never named."""
    sys = tmp_path / "sys"
    for dev, name, holders in (("loop2", None, ["dm-5"]), ("dm-5", "vg0-pool_tdata", ["dm-7"]),
                               ("dm-7", "vg0-pool", []), ("dm-1", "vg0-root", [])):  # dm-1: the host's
        (sys / dev / "holders").mkdir(parents=True)
        for h in holders:
            (sys / dev / "holders" / h).touch()
        if name:
            (sys / dev / "dm").mkdir()
            (sys / dev / "dm" / "name").write_text(name + "\n")
    creating(fp, tmp_path, lvm)
    with ExitStack() as undo:
        volumes("d.raw", [Fs("/dev/loop2", "LVM2_member", 2)], undo)
    removed = [list(c)[-1] for c in fp.calls if list(c)[:2] == ["dmsetup", "remove"]]
    pid = os.getpid()
    assert removed == [f"si-xen-ro-{pid}-1", f"si-xen-ro-{pid}-0", "vg0-pool", "vg0-pool_tdata"]


def test_a_private_copy_is_mapped_writable_for_its_journal(lvm, fp, tmp_path):
    calls = creating(fp, tmp_path, lvm)
    with ExitStack() as undo:
        volumes("d.raw", [Fs("/dev/loop2", "LVM2_member", 2)], undo, writable=True)
    assert all("--readonly" not in c for c in calls) and len(calls) == 2 and lvm == {}


def test_a_failure_midway_removes_the_maps_made(lvm, fp, tmp_path):
    creating(fp, tmp_path, lvm, fail_at=1)
    with pytest.raises(proc.ProcError):
        with ExitStack() as undo:
            volumes("d.raw", [Fs("/dev/loop2", "LVM2_member", 2)], undo)
    assert lvm == {} and os.listdir(tmp_path) == []


def test_an_unsupported_lv_refused_before_any_map(lvm, fp, tmp_path):
    thin = {"report": [{"seg": [{"vg_name": "vg0", "lv_name": "data", "lv_attr": "Vwi-------",
                                 **seg(0, 8192, "", "thin")}]}]}
    calls = creating(fp, tmp_path, lvm, segs=thin)
    with pytest.raises(Fatal, match="vg0/data is of type thin"):
        with ExitStack() as undo:
            volumes("d.raw", [Fs("/dev/loop2", "LVM2_member", 2)], undo)
    assert calls == []


def test_no_device_mapper_one_fatal_naming_the_vg(fp, monkeypatch):
    monkeypatch.setattr(fromdisk_lvm, "device_mapper_ok", lambda: False)
    monkeypatch.setattr(proc, "which", lambda p: f"/sbin/{p}")
    fp.register(["pvs", fp.any()], stdout=json.dumps(PVS))
    with pytest.raises(Fatal) as e:
        volumes("d.raw", [Fs("/dev/loop2", "LVM2_member", 2)], ExitStack())
    msg = str(e.value)
    assert "volume group vg0 on partition 2" in msg and "no device-mapper" in msg and "modprobe dm-mod" in msg
    assert not any(c[0] == "dmsetup" for c in fp.calls)


def test_no_pv_nothing_run(fp, monkeypatch):
    monkeypatch.setattr(fromdisk_lvm, "device_mapper_ok", lambda: False)
    assert volumes("d.raw", [], ExitStack()) == []
    assert list(fp.calls) == []


def test_no_pv_a_dead_runs_maps_removed_all_the_same(fp, monkeypatch):
    monkeypatch.setattr(fromdisk_lvm, "device_mapper_ok", lambda: True)
    monkeypatch.setattr(proc, "which", lambda p: f"/sbin/{p}")
    monkeypatch.setattr(fromdisk_lvm.locks, "pid_alive", lambda pid: False)
    fp.register(["dmsetup", "ls"], stdout="si-xen-ro-77-0\t(253:2)\n")
    fp.register(["dmsetup", "remove", "--retry", "si-xen-ro-77-0"])
    assert volumes("d.raw", [], ExitStack()) == []
    assert [c[:2] for c in fp.calls] == [["dmsetup", "ls"], ["dmsetup", "remove"]]


def test_a_dead_runs_maps_removed_a_live_ones_kept(fp, monkeypatch):
    monkeypatch.setattr(fromdisk_lvm.locks, "pid_alive", lambda pid: pid == 42)
    fp.register(["dmsetup", "ls"], stdout="vg0-root\t(253:0)\nsi-xen-ro-42-0\t(253:1)\nsi-xen-ro-77-3\t(253:2)\n")
    fp.register(["dmsetup", "remove", "--retry", "si-xen-ro-77-3"])
    assert fromdisk_lvm.clear_stale() == ["si-xen-ro-77-3"]
