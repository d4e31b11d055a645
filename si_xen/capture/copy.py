"""A VM's (or a foreign disk's) filesystems copied into a staging image dir, read-only.

The reading runs as ``unshare --mount --propagation private python3 -m si_xen.capture.copy SPEC``
(vmread.py's way): the read-only mounts live in a mount namespace of the child's own, so even a
SIGKILL leaves no mount, and a ro loop mount's device is read-only and autoclear. The copy is
SystemImager's: ``rsync -aHAXS --numeric-ids --delete --delete-excluded --exclude-from=F`` (si_getimage
adds -A -X nowhere; an image made by si_mkxenvm keeps both, so a capture does too).

The mount point is ``/run/si-xen.NAME.capture-PID``: the child's mounts never show outside, and a
parent killed by SIGKILL leaves only that empty directory, which the next capture removes
(``clear_stale``). ``--update`` passes ``link_dest``: unchanged files are hard links to the
published image, so only what changed is written.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass, field

from .. import locks, proc

PAUSE = "SI_XEN_CAPTURE_PAUSE"  # tests: the child sleeps this long once the copy is made (a kill mid-capture)
RUN_DIR = "/run" if os.path.isdir("/run") else "/tmp"


@dataclass(frozen=True)
class Copied:
    entries: int  # files, directories, links... rsync's "Number of files"
    bytes: int  # rsync's "Total file size"
    written: int  # rsync's "Total transferred file size": what was not already there (--update)
    fstab: str  # the tree's /etc/fstab ("" if none)
    excluded: list[str] = field(default_factory=list)  # the rsync exclude patterns used
    skipped: list[str] = field(default_factory=list)  # mount points the tree lacks (their fs not read)


def clear_stale(name: str) -> list[str]:
    """The mount directories of captures of ``name`` killed before they removed them (rmdir only: a
    private namespace's mounts die with it, so they are empty)."""
    gone = []
    for d in glob.glob(os.path.join(RUN_DIR, f"si-xen.{name}.capture-*")):
        pid = d.rsplit("-", 1)[-1]
        if pid.isdigit() and not locks.pid_alive(int(pid)):
            try:
                os.rmdir(d)
                gone.append(d)
            except OSError:
                pass
    return gone


def copy_tree(disks: list, where_from: dict, dest: str, excludes: list[str], say, *, name: str = "vm",
              copy_disks: bool = False, replay: bool | list[str] = False, link_dest: str | None = None) -> Copied:
    """Copy the tree of ``disks`` ([(target, fs, mountpoint)]) into the existing dir ``dest``.
    ``where_from``: storage, root, pool, lock_dir (storage.backend's arguments); ``excludes``:
    rsync patterns, the tree's own network mounts added in the child (it reads their fstab);
    ``copy_disks``: read reflinked copies of the disks (a running VM's --snapshot on XFS);
    ``replay``: the disks read are private copies (True: all; else the targets named), their
    journals replayed (mount.mount_tree_ro)."""
    clear_stale(name)
    where = os.path.join(RUN_DIR, f"si-xen.{name}.capture-{os.getpid()}")
    os.mkdir(where, 0o700)
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    spec = {"disks": [list(d) for d in disks], **where_from, "where": where, "dest": dest, "excludes": excludes,
            "copy": copy_disks, "replay": True if copy_disks else replay, "token": token, "link_dest": link_dest}
    say(f"Copying the filesystems into {dest}")
    try:
        # a process group of its own (proc.Begun): a signal here ends the child and its rsync with it
        argv, env = proc.in_mount_namespace(__name__, json.dumps(spec))
        out = proc.Begun(argv, env={**env, "LC_ALL": "C"}).result().stdout
    finally:
        os.rmdir(where)  # our mounts were never seen here
        for target, _fs, _mp in disks:  # the copies of a child killed before it unlinked them
            for p in glob.glob(os.path.join(os.path.dirname(target), f".capture-{token}-*")):
                os.unlink(p)
    r = json.loads(out)
    return Copied(r["entries"], r["bytes"], r["written"], r["fstab"], r["excluded"], r["skipped"])


def _stat(text: str, label: str) -> int:
    m = re.search(rf"^{label}: ([\d,]+)", text, re.M)
    return int(m[1].replace(",", "")) if m else 0


def child(spec: dict) -> dict:
    """In the private namespace: mount read-only, rsync, and let the namespace's end unmount."""
    from .. import excludes
    from ..guestfs import Guest
    from ..vmread import mount_ro

    where = spec["where"]
    mounted, skipped = mount_ro(spec, ".capture")
    fstab = ""
    try:
        fstab = Guest(where).read_text("/etc/fstab") or ""
    except Exception:  # a link out of the tree, a directory: no fstab to read
        pass
    pats = list(dict.fromkeys([*spec["excludes"], *excludes.nonlocal_mounts(where)]))
    # setpriv --pdeathsig: rsync ends with this child, as this child with its parent (main()): a
    # capture killed outright leaves no copy writing on into a staging dir the next one removes
    argv = ["setpriv", "--pdeathsig", "KILL", "rsync", "-aHAXS", "--numeric-ids", "--delete", "--delete-excluded",
            "--stats", "--exclude-from=-"]
    if spec.get("link_dest"):
        argv.append(f"--link-dest={spec['link_dest']}")
    res = proc.run([*argv, where + "/", spec["dest"].rstrip("/") + "/"], input="".join(p + "\n" for p in pats))
    if os.environ.get(PAUSE):
        time.sleep(float(os.environ[PAUSE]))
    for m in reversed(mounted):
        proc.run(["umount", m])
    return {"entries": _stat(res.stdout, "Number of files"), "bytes": _stat(res.stdout, "Total file size"),
            "written": _stat(res.stdout, "Total transferred file size"), "fstab": fstab, "excluded": pats,
            "skipped": skipped}


PR_SET_PDEATHSIG = 1


def main(argv: list[str]) -> int:
    import ctypes
    import signal

    # killed with the capture, however it ends (its SIGKILL included): our mounts go with us
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:
        return 1  # the capture died before the line above took effect
    sys.stdout.write(json.dumps(child(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
