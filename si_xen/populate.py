"""Copy the image tree into the VM's filesystems, the way SystemImager installs a client."""

from __future__ import annotations

import os
import stat

from . import proc

# SystemImager's install-time exclusions (master's list; /dev is kept because old guests
# without devtmpfs need their static nodes).
EXCLUDES = ("lost+found/", "/proc/*", "/sys/*", "/run/*", "/tmp/*", "/var/lib/nfs/rpc_pipefs", "/etc/system-id")
_SKIP_CONTENT = ("proc", "sys", "run", "tmp")


def measure(image: str, mountpoints: list[str]) -> dict[str, tuple[int, int]]:
    """Bytes really used and inode count per target mountpoint (deepest match wins)."""
    mps = sorted(mountpoints, key=len, reverse=True)
    usage = {mp: [0, 0] for mp in mountpoints}
    seen: set[tuple[int, int]] = set()

    def bucket(rel: str) -> list[int]:
        for mp in mps:
            if mp == "/" or rel == mp or rel.startswith(mp + "/"):
                return usage[mp]
        return usage["/"]

    stack = [("/", image)]
    while stack:
        rel, path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for e in entries:
            erel = rel.rstrip("/") + "/" + e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            b = bucket(erel)
            b[0] += st.st_blocks * 512
            b[1] += 1
            if stat.S_ISDIR(st.st_mode) and not (rel == "/" and e.name in _SKIP_CONTENT) and e.name != "lost+found":
                stack.append((erel, e.path))
    return {mp: (v[0], v[1]) for mp, v in usage.items()}


def needed_mib(used_bytes: int, inodes: int) -> int:
    """Filesystem size that holds the data with room for metadata, journal and inodes."""
    data = used_bytes * 1.08 / 2**20 + 64
    inode_room = inodes * 1.2 * 16384 / 2**20  # ext4's default bytes-per-inode
    return int(max(data, inode_room)) + 1


def copy(image: str, dest: str, progress=None) -> None:
    """rsync -aHAXS --numeric-ids: owners, modes, hard links, ACLs, xattrs, devices, sparse."""
    argv = ["rsync", "-aHAXS", "--numeric-ids", "--info=progress2", "--no-inc-recursive"]
    argv += [f"--exclude={x}" for x in EXCLUDES]
    argv += [image.rstrip("/") + "/", dest.rstrip("/") + "/"]
    proc.stream(argv, progress or (lambda line: None))
