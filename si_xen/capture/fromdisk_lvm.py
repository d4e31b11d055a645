"""LVM inside a foreign disk: its logical volumes mapped read-only by device-mapper, never activated.

Why not ``vgchange -ay``: the guest's VG may share its name with one of this host's (both ``vg0``,
both ``debian-vg``), and activating writes metadata. Instead LVM's reporting commands read the
metadata, restricted to our own loop devices (``--devices``) and ``--readonly``, and each LV is
mapped by ``dmsetup create --readonly`` from its linear or striped segments, under a name of our
own (``si-xen-ro-PID-N``): no clash, nothing written. The maps are undone with the loop devices;
a capture killed outright leaves them, and the next one removes those of dead processes.
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import ExitStack

from .. import locks, proc, rollback
from ..errors import Fatal
from ..storage.lvm import device_mapper_ok
from .fromdisk_probe import Fs, mapper_name  # noqa: F401 (mapper_name: LVM's names, kept together)

PREFIX = "si-xen-ro-"
STALE = re.compile(rf"{PREFIX}(\d+)-\d+$")
SUPPORTED = ("linear", "striped")
ENV = {"LVM_SUPPRESS_FD_WARNINGS": "1"}  # our open fds (the autoclear loops) are no leak
MAPPER = "/dev/mapper"
SYS = "/sys/class/block"


def _report(cmd: str, devs: list[str], fields: str, *extra: str) -> list[dict]:
    argv = [cmd, *[a for d in devs for a in ("--devices", d)], "--readonly", "--reportformat", "json",
            "--units", "s", "--nosuffix", *extra, "-o", fields]
    out = json.loads(proc.run(argv, env=ENV).stdout or "{}")
    return [row for part in out.get("report", []) for rows in part.values() for row in rows]


def _vg_names(path: str, pvs: list[Fs]) -> list[str]:
    try:
        rows = _report("pvs", [f.dev for f in pvs], "pv_name,vg_name")
    except (proc.ProcError, ValueError):
        return []
    return sorted({r.get("vg_name", "") for r in rows} - {""})


def table(segments: list[dict], pe_start: dict[str, int], extent: int, where: str) -> str:
    """A device-mapper table (sectors) for one LV from its ``lvs --segments`` rows; Fatal for a
    segment type other than linear or striped, or one on a PV not on this disk image."""
    lines = []
    for s in sorted(segments, key=lambda s: int(s["seg_start"])):
        kind = s.get("segtype", "")
        if kind not in SUPPORTED:
            raise Fatal(f"logical volume {where} is of type {kind}, which si_getxenimage does not read "
                        f"(linear and striped LVs only)",
                        "copy it into a linear LV or onto a plain partition of a new disk image and capture that")
        ranges = re.findall(r"([^\s,]+):(\d+)-(\d+)", s.get("seg_pe_ranges", ""))
        if not ranges or any(dev not in pe_start for dev, _a, _b in ranges):
            raise Fatal(f"logical volume {where} lies partly on a physical volume that is not on this disk image",
                        "capture a disk image that holds all of its volume group's physical volumes")
        targets = [f"{dev} {pe_start[dev] + int(first) * extent}" for dev, first, _last in ranges]
        start, size = int(s["seg_start"]), int(s["seg_size"])
        if len(targets) == 1:
            lines.append(f"{start} {size} linear {targets[0]}")
        else:
            lines.append(f"{start} {size} striped {len(targets)} {int(s['stripe_size'])} {' '.join(targets)}")
    return "\n".join(lines) + "\n"


def clear_stale() -> list[str]:
    """Our maps left by captures killed outright (their pid gone): removed."""
    res = proc.run(["dmsetup", "ls"], ok=(0, 1))
    gone = []
    for line in res.stdout.splitlines():
        name = line.split("\t")[0].split(" ")[0]
        m = STALE.match(name)
        if m and not locks.pid_alive(int(m.group(1))):
            proc.run(["dmsetup", "remove", "--retry", name], ok=(0, 1))
            gone.append(name)
    return gone


def _remove(name: str) -> None:
    proc.run(["dmsetup", "remove", "--retry", name])


def _map(name: str, text: str, writable: bool, undo: ExitStack) -> str:
    with rollback.critical():  # made and its undo registered: no signal in between
        proc.run(["dmsetup", "create", *([] if writable else ["--readonly"]), name], input=text)
        undo.callback(_remove, name)
    dev = os.path.join(MAPPER, name)
    for _ in range(50):  # udev makes the node (dmsetup waits for it where udev runs)
        if os.path.exists(dev):
            return dev
        time.sleep(0.1)
    proc.run(["dmsetup", "mknodes", name])
    return dev


def _release(devs: list[str]) -> None:
    """Device-mapper devices that stand on our loop devices and are not our maps, removed (their
    holders first): udev's LVM rule (69-lvm.rules: pvscan --autoactivation event) may activate the
    guest's VG by its name as soon as the loops appear, and its LVs would hold them after the capture.
    What holds our loop devices is the guest's alone; deactivating its VG by name or UUID could reach
    the host's (a disk cloned from the host's own has its UUIDs)."""
    if proc.which("udevadm"):
        proc.run(["udevadm", "settle", "--timeout=10"], ok=(0, 1))
    for dev in devs:
        for name in _holders(os.path.basename(os.path.realpath(dev))):
            proc.run(["dmsetup", "remove", "--retry", name], ok=(0, 1))


def _holders(block: str) -> list[str]:
    """The dm names holding block device ``block`` (sysfs), the outermost first."""
    out = []
    try:
        held = sorted(os.listdir(os.path.join(SYS, block, "holders")))
    except OSError:
        return []
    for h in held:
        try:
            with open(os.path.join(SYS, h, "dm", "name")) as f:
                name = f.read().strip()
        except OSError:
            continue
        out = [*_holders(h), *out, *([name] if not name.startswith(PREFIX) else [])]
    return out


def lv_tables(path: str, devs: list[str]) -> dict[tuple[str, str], str]:
    """(VG, LV): its device-mapper table, from the metadata on ``devs`` (read-only, those only);
    Fatal for an LV si-xen does not read (before any is mapped)."""
    try:
        pv_rows = _report("pvs", devs, "pv_name,vg_name,pe_start,vg_extent_size")
        seg_rows = _report("lvs", devs, "vg_name,lv_name,lv_attr,segtype,seg_start,seg_size,stripe_size,seg_pe_ranges",
                           "--segments")
    except (proc.ProcError, ValueError) as e:
        raise Fatal(f"the LVM metadata of disk image {path} cannot be read: {e}",
                    "check it on a copy (pvck, vgcfgrestore --test)") from None
    pe_start = {r["pv_name"]: int(r["pe_start"]) for r in pv_rows if r.get("vg_name")}
    extent = {r["vg_name"]: int(r["vg_extent_size"]) for r in pv_rows if r.get("vg_name")}
    lvs: dict[tuple[str, str], list[dict]] = {}
    for r in seg_rows:
        lvs.setdefault((r["vg_name"], r["lv_name"]), []).append(r)
    tables = {}
    for (vg, lv), segs in lvs.items():
        if segs[0].get("lv_attr", "-")[:1] in ("s", "S"):  # a snapshot's segments hold its changes only
            raise Fatal(f"logical volume {vg}/{lv} is of type snapshot, which si_getxenimage does not read",
                        "merge or remove the snapshot (on a copy of the disk) and capture that")
        tables[(vg, lv)] = table(segs, pe_start, extent[vg], f"{vg}/{lv}")
    return tables


def volumes(path: str, pvs: list[Fs], undo: ExitStack, writable: bool = False) -> list[Fs]:
    """The logical volumes on the physical volumes ``pvs`` (our loop devices of disk image
    ``path``), each mapped by device-mapper (read-only unless ``writable``: our private copy whose
    journals are replayed) and probed by blkid -p. Fatal where this host cannot map them."""
    if not pvs:
        if proc.which("dmsetup") and device_mapper_ok():
            clear_stale()  # a killed capture's maps hold its loop devices: gone with the next capture
        return []
    if not proc.which("lvs") or not proc.which("dmsetup"):
        raise Fatal(f"disk image {path} keeps its filesystems in LVM and lvs or dmsetup is not installed here",
                    "install lvm2 (apt-get install lvm2)")
    if not device_mapper_ok():
        vgs = _vg_names(path, pvs)
        what = f"volume group {', '.join(vgs)}" if vgs else "a volume group"
        raise Fatal(f"disk image {path} keeps its filesystems in LVM ({what} on {pvs[0].named()}), and this host "
                    "cannot map it: its kernel has no device-mapper",
                    "run si_getxenimage on a host with device-mapper (modprobe dm-mod)")
    clear_stale()
    devs = [f.dev for f in pvs]
    undo.callback(_release, devs)  # after our maps are removed, before the loop devices go
    tables = lv_tables(path, devs)
    out = []
    for n, ((vg, lv), text) in enumerate(tables.items()):
        dev = _map(f"{PREFIX}{os.getpid()}-{n}", text, writable, undo)
        res = proc.run(["blkid", "-p", "-o", "export", dev], ok=(0, 2, 8))
        kv = dict(line.split("=", 1) for line in res.stdout.splitlines() if "=" in line)
        size = sum(int(line.split()[1]) for line in text.splitlines()) * 512
        out.append(Fs(dev, kv.get("TYPE", ""), 0, kv.get("UUID", ""), kv.get("LABEL", ""), size=size, lv=f"{vg}/{lv}"))
    return out
