"""A VM's filesystems read without booting it, changing nothing: si_lsxenvm --drift's VM side,
and si_updatexenvm --dry-run's.

The reading runs as ``unshare --mount --propagation private python3 -m si_xen.vmread SPEC``: its
read-only mounts live in a mount namespace of its own, so even a SIGKILL leaves no mount, and a
ro loop mount's device is read-only and autoclear (gone with the mount). A running VM is read
from reflinked copies of its disks or thin snapshots (read_mode), else live.
"""

from __future__ import annotations

import glob
import json
import marshal
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable

from . import excludes, proc
from .image import survey

Classify = Callable[[str, bool], "str | None"]  # path, is_dir -> "excluded" | "identity" | None
PAUSE = "SI_XEN_DRIFT_PAUSE"  # tests: the VM side sleeps this long once mounted (a kill mid-walk)


def read_mode(rec, running: bool) -> str:
    """How to read the VM's disks: ``offline`` (as they are), ``copy`` (reflinked copies) or
    ``snapshot`` (thin snapshots), both private and their journals replayed, or ``live``. A stopped
    VM whose journal holds changes (not shut down cleanly) is read as a running one is."""
    if not running and not unclean(rec):
        return "offline"
    from .storage.reflink import reflinks_work

    if rec.storage == "lvm" and rec.thin_pool:
        return "snapshot"
    if rec.storage == "dir" and rec.disks:
        try:
            if reflinks_work(os.path.dirname(rec.disks[0].target)):
                return "copy"
        except OSError:
            pass
    return "live"


def unclean(rec) -> list[str]:
    """The VM's filesystems whose journals hold changes ("/ (xfs)"), read from its disks."""
    from .storage.mount import RO_OPTS
    from .storage.mount import unclean as dirty

    return [f"{d.mountpoint} ({d.fs})" for d in rec.disks if d.mountpoint and d.fs in RO_OPTS and dirty(d.target, d.fs)]


TAG = "si_xen_drift"


def snapshots(rec) -> dict[str, str]:
    """A running VM's thin LVs snapshotted (no extra space, never activated by default, tagged):
    target -> the snapshot's device. A stale one (a --drift killed here) is removed first; the
    VM's lock, held, keeps two of us apart. Untested on a real VG: the test host has no LVM."""
    out: dict[str, str] = {}
    try:
        for d in rec.disks:
            if not d.mountpoint:
                continue
            vg, lv = d.target.split("/")[-2:]
            snap = f"{vg}/{lv}.drift"
            tags = proc.run(["lvs", "--noheadings", "-o", "lv_tags", snap], ok=(0, 5))
            if tags.returncode == 0 and TAG in tags.stdout:
                proc.run(["lvremove", "--yes", snap])
            proc.run(["lvcreate", "--yes", "-s", "-kn", "-n", f"{lv}.drift", "--addtag", TAG, f"{vg}/{lv}"])
            out[d.target] = f"/dev/{snap}"
            proc.run(["lvchange", "-ay", snap])
    except BaseException:
        drop_snapshots(out)
        raise
    return out


def drop_snapshots(snaps: dict[str, str]) -> None:
    for dev in snaps.values():
        proc.run(["lvremove", "--yes", dev[len("/dev/"):]], ok=(0, 5))


def read_vm(rec, mode: str, lock_dir: str) -> tuple[dict, list[str], Classify]:
    """The VM's manifest, read by the child in its own mount namespace; (rows, notes, and what
    an update leaves alone in that VM: excludes.Rules.classify, made from its own tree)."""
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    run_dir = "/run" if os.path.isdir("/run") else "/tmp"
    snaps = snapshots(rec) if mode == "snapshot" else {}
    try:
        where = tempfile.mkdtemp(prefix=f"si-xen.{rec.name}.drift-", dir=run_dir)
    except BaseException:
        drop_snapshots(snaps)
        raise
    spec = {"disks": [[snaps.get(d.target, d.target), d.fs, d.mountpoint] for d in rec.disks], "storage": rec.storage,
            "root": rec.storage_root, "pool": rec.thin_pool, "lock_dir": lock_dir, "where": where,
            "copy": mode == "copy", "replay": mode in ("copy", "snapshot"), "token": token,
            "image_root": rec.image_path if rec.image_path and os.path.isdir(rec.image_path) else None,
            "nameservers": bool(rec.request.get("nameservers"))}
    try:
        with tempfile.TemporaryFile() as out:
            argv, env = proc.in_mount_namespace(__name__, json.dumps(spec))
            proc.run(argv, env=env, stdout=out)
            out.seek(0)
            rows, skipped, (excluded, identity) = marshal.loads(out.read())
    finally:
        os.rmdir(where)  # our mounts were never seen here
        drop_snapshots(snaps)
        for d in rec.disks:  # the copies of a child killed before it unlinked them
            for p in glob.glob(os.path.join(os.path.dirname(d.target), f".drift-{token}-*")):
                os.unlink(p)
    notes = [f"WARNING: {m} is not a directory in the VM's /: its filesystem was not read" for m in skipped]
    return rows, notes, excludes.Rules(excludes.Patterns(excluded), excludes.Patterns(identity)).classify


def mount_ro(spec: dict, prefix: str) -> tuple[list[str], list[str]]:
    """In a private namespace: ``spec``'s disks ([target, fs, mountpoint]) mounted read-only at
    spec["where"] (storage.mount.mount_tree_ro); with spec["copy"] each from a reflinked copy beside
    it (``PREFIX-TOKEN-NAME``), unlinked once mounted (the loop device keeps it open). Returns
    (mounted, skipped) as mount_tree_ro does."""
    from .record import DiskRecord
    from .storage import backend
    from .storage.mount import mount_tree_ro
    from .storage.reflink import reflink

    disks = [DiskRecord("", mp, fs, "", target) for target, fs, mp in spec["disks"]]
    copies = []
    if spec["copy"]:
        for i, d in enumerate(disks):
            if d.mountpoint:
                dst = os.path.join(os.path.dirname(d.target), f"{prefix}-{spec['token']}-{os.path.basename(d.target)}")
                reflink(d.target, dst)
                copies.append(dst)
                disks[i] = DiskRecord("", d.mountpoint, d.fs, "", dst)
    b = backend(spec["storage"], spec["root"], spec["pool"], spec["lock_dir"])
    mounted, skipped = mount_tree_ro(disks, b, spec["where"], replay=spec.get("replay", False))
    for c in copies:
        os.unlink(c)
    return mounted, skipped


def child(spec: dict) -> tuple[dict, list[str], tuple[list[str], list[str]]]:
    """In the private namespace: mount read-only (a running VM's reflinked copies, each unlinked
    once mounted), walk, read the VM's own rules (its sshd's keys, fstab, exclude file), and let
    the namespace's end unmount."""
    mounted, skipped = mount_ro(spec, ".drift")
    if os.environ.get(PAUSE):
        time.sleep(float(os.environ[PAUSE]))
    rows = survey.manifest_of(spec["where"])
    from .distros import detect
    from .guestfs import Guest

    rules = excludes.rules_for(spec["where"], spec.get("image_root"), detect(Guest(spec["where"]), require=False),
                               spec.get("nameservers", False))
    for m in reversed(mounted):
        proc.run(["umount", m])
    return rows, skipped, (list(rules.excluded.lines), list(rules.identity.lines))


def main(argv: list[str]) -> int:
    result = child(json.loads(argv[0]))
    sys.stdout.buffer.write(marshal.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
