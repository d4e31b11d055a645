"""The image tree into the VM's filesystems: fresh (mkfs + copy), or cloned from a base.

A fresh copy preserves owners, modes, hard links, ACLs, xattrs, device nodes and sparse
files, with SystemImager's install-time exclusions. Where the image leaves nothing to
exclude and the VM has one ext3/ext4 filesystem, mke2fs -d writes the tree while making
the filesystem: one pass over the data instead of mkfs, mount and rsync.

The functions here are the deploy's steps (deploy.py) and, run on temporary disks, the
build of an image's base disks (bases.py): every disk they make is journaled first.
"""

from __future__ import annotations

import os

from . import proc
from .storage.mount import mkfs

# SystemImager's install-time exclusions (master's list; /dev is kept because old guests
# without devtmpfs need their static nodes).
EXCLUDES = ("lost+found/", "/proc/*", "/sys/*", "/run/*", "/tmp/*", "/var/lib/nfs/rpc_pipefs", "/etc/system-id")


def copy(image: str, dest: str, progress=None) -> None:
    """rsync -aHAXS --numeric-ids, as SystemImager's autoinstall script does."""
    argv = ["rsync", "-aHAXS", "--numeric-ids", "--info=progress2", "--no-inc-recursive"]
    argv += [f"--exclude={x}" for x in EXCLUDES]
    argv += [image.rstrip("/") + "/", dest.rstrip("/") + "/"]
    proc.stream(argv, progress or (lambda line: None))


def one_pass_ok(image: str, disks) -> bool:
    """mke2fs -d makes and fills each ext3/ext4 filesystem in one pass: the exclusions, and
    for / the other filesystems' mount points, are masked (storage/view.py). XFS, or a mount
    point the image has as a symlink, is made, mounted and filled by rsync."""
    data = [d for d in disks if d.fs != "swap"]
    return all(d.fs in ("ext3", "ext4") for d in data) and all(
        _plain_dir(image, d.mountpoint) for d in data if d.mountpoint != "/")


def _plain_dir(image: str, guest_path: str) -> bool:
    path = os.path.normpath(os.path.join(image, guest_path.lstrip("/")))
    return os.path.isdir(path) and os.path.realpath(path) == os.path.realpath(image) + guest_path.rstrip("/")


def _under(path: str, mountpoint: str) -> str | None:
    """``path`` relative to the filesystem mounted at ``mountpoint`` (guest paths), if inside it."""
    if mountpoint == "/":
        return path
    return path[len(mountpoint):] if path.startswith(mountpoint + "/") else None


def _masks(plan, disk) -> tuple[str, ...]:
    """What mke2fs -d must not copy into ``disk``: the excluded paths in it, and the mount
    points of the filesystems below it (they get their own disk; here an empty directory)."""
    mine = disk.mountpoint
    below = [d.mountpoint for d in plan.disks if d.mountpoint and d.mountpoint != mine and _under(d.mountpoint, mine)]
    below = [b for b in below if not any(b.startswith(o + "/") for o in below)]  # /var/log is in /var's
    # what lies in a filesystem below is that one's business: its mount point is masked whole here
    paths = [p for p in plan.excluded if not any(p == b or p.startswith(b + "/") for b in below)] + below
    return tuple(sorted({r for r in (_under(p, mine) for p in paths) if r}))


def make_disks(plan, backend, rep, journal, bases: dict[str, str] | None = None) -> None:
    """Each disk created (or, with ``bases``, cloned); swap disks get their swap signature."""
    for d in sorted(plan.disks, key=lambda d: d.vdev):
        if d.fs == "swap":
            with rep.step(f"Creating swap image: {d.target}"):
                backend.create(d, journal)
                mkfs(d)
        elif bases:
            with rep.step(f"Cloning disk image ({d.mountpoint}): {d.target}\n(Base: {bases[d.name]})"):
                backend.clone(bases[d.name], d, journal)
        else:
            with rep.step(f"Creating disk image ({d.mountpoint}): {d.target}"):
                backend.create(d, journal)


def make_filesystems(plan, image, rep, one_pass: bool) -> None:
    for d in plan.disks:
        if d.fs == "swap":
            continue
        if one_pass:
            with rep.step(f"Creating {d.fs} filesystem on {d.target}\nInstallation method: copy (mke2fs -d)\n"
                          f"(Source: {image.path})"):
                mkfs(d, os.path.join(image.path, d.mountpoint.lstrip("/")), _masks(plan, d))
        else:
            with rep.step(f"Creating {d.fs} filesystem on {d.target}"):
                mkfs(d)


def copy_in(image, root: str, rep) -> None:
    with rep.step(f"Installation method: copy\n(Source: {image.path})"):
        copy(image.path, root, rep.progress)
        rep.end_progress()


__all__ = ["EXCLUDES", "copy", "make_disks", "make_filesystems", "copy_in", "one_pass_ok"]
