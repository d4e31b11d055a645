"""Scratch filesystems on loop-mounted sparse files, disk usage, and leaving nothing behind."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time

from .proc import run, syncfs


def used_bytes(path: str) -> int:
    """Bytes really allocated on the filesystem holding path (reflinked blocks counted once)."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def settled_used(path: str, timeout: float = 10.0) -> int:
    """used_bytes once the filesystem has finished freeing what the last cleanup deleted (XFS frees
    unlinked inodes in the background), so a run is not credited with an earlier run's removal."""
    syncfs(path)
    last, deadline = used_bytes(path), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = used_bytes(path)
        if now == last:
            return now
        last = now
    return last


def fs_type(path: str) -> str:
    best = ("", "?")
    for _dev, mnt, fstype in _mounts():
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best[0]):
            best = (mnt, fstype)
    return best[1]


def make_scratch(workdir: str, fs: str, size: str, log: str) -> str:
    """A fresh fs (xfs with reflinks, or ext4) on a sparse file under workdir, mounted; its mount point."""
    img, mnt = os.path.join(workdir, f"{fs}.img"), os.path.join(workdir, fs)
    run(["truncate", "-s", size, img], log)
    mkfs = {"xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"], "ext4": ["mkfs.ext4", "-q", "-F"]}[fs]
    run([*mkfs, img], log)
    os.mkdir(mnt)
    run(["mount", "-o", "loop", img, mnt], log)
    return mnt


def _mounts() -> list[tuple[str, str, str]]:
    with open("/proc/self/mounts") as f:
        rows = [line.split()[:3] for line in f]
    return [(dev, mnt.replace("\\040", " "), fstype) for dev, mnt, fstype in rows]


def _loops_under(root: str) -> set[str]:
    """Loop devices whose backing file lies under root (ours, and those our children attached)."""
    loops = set()
    for bf in glob.glob("/sys/block/loop*/loop/backing_file"):
        try:
            with open(bf) as f:
                backing = f.read().strip()
        except OSError:
            continue
        if backing.startswith(root.rstrip("/") + "/"):
            loops.add("/dev/" + bf.split("/")[3])
    return loops


def _targets(root: str) -> tuple[list[str], set[str]]:
    loops = _loops_under(root)
    under = root.rstrip("/") + "/"
    mounts = [(dev, mnt) for dev, mnt, _ in _mounts() if dev in loops or mnt.startswith(under)]
    mounted = {dev for dev, _ in mounts}
    return [mnt for _, mnt in reversed(mounts)], loops - mounted


def release(root: str, tries: int = 8) -> bool:
    """Unmount and detach everything backed by or mounted under root, innermost first."""
    for attempt in range(tries):
        mounts, free_loops = _targets(root)
        if not mounts and not free_loops:
            return True
        lazy = ["-l"] if attempt == tries - 1 else []
        for mnt in mounts:
            subprocess.run(["umount", *lazy, mnt], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for loop in free_loops:
            subprocess.run(["losetup", "-d", loop], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3 * (attempt + 1))
    mounts, free_loops = _targets(root)
    return not mounts and not free_loops


def remove_workdir(workdir: str) -> None:
    """Release every mount and loop device of the run, then delete its files (never across a mount)."""
    if not release(workdir):
        print(f"WARNING: could not release everything under {workdir}; left in place")
        return
    shutil.rmtree(workdir, ignore_errors=True)


def release_leaks(root: str) -> None:
    """Unmount what a failed child left mounted from files under root (xen-create-image leaves its
    guest disk on /tmp/XXXXXXXXXX), and remove those temporary mount points."""
    mounts, _ = _targets(root)
    release(root)
    for mnt in mounts:
        if mnt.startswith("/tmp/") and not os.path.ismount(mnt):
            try:
                os.rmdir(mnt)
            except OSError:
                pass
