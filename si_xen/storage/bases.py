"""Copy-on-write clones: the first VM of an image builds a base disk per filesystem;
later VMs get reflinks of it (XFS, btrfs) and only their own fixups are written.

Bases live beside the VMs (reflinks cannot cross filesystems; LVM thin snapshots stay in
their pool), named by image, image fingerprint, filesystem and size, so a changed image or
another size gets a new base. The backends (files.py, lvm.py) hold the storage-specific part.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile

from .. import atomic

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def reflink(src: str, dst: str) -> None:
    """dst shares all of src's blocks until one of them is written."""
    with open(src, "rb") as s:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.ioctl(fd, FICLONE, s.fileno())
        except OSError:
            os.close(fd)
            os.unlink(dst)
            raise
        os.close(fd)


def reflinks_work(directory: str) -> bool:
    """Whether the filesystem holding ``directory`` can reflink (tried, not guessed)."""
    with tempfile.TemporaryDirectory(dir=directory, prefix=".si-xen-reflink.") as d:
        a, b = os.path.join(d, "a"), os.path.join(d, "b")
        with open(a, "wb") as f:
            f.write(b"x" * 4096)
        try:
            reflink(a, b)
        except OSError:
            return False
        return True


def fs_type(path: str) -> str:
    """The type of the filesystem holding ``path``, from the mount table (nothing written)."""
    path, best, kind = os.path.realpath(path), "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt = fields[4].replace("\\040", " ")
            sep = fields.index("-")
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, kind = mnt, fields[sep + 1]
    return kind


def reflinks_likely(directory: str) -> bool:
    """What --dry-run says about clones: it must not write a probe into the admin's directory."""
    return fs_type(directory) in ("xfs", "btrfs")


def base_name(image: str, fingerprint: str, disk) -> str:
    """Image, image fingerprint, disk, filesystem and size: what a clone must match."""
    return f"{image}-{fingerprint}-{disk.name}-{disk.fs}-{disk.size_mib}M"


def write_meta(path: str, meta: dict) -> None:
    atomic.write(path, json.dumps(meta, indent=1))


def beside(base: str, what: str) -> str:
    """A file kept with a base, e.g. the guest kernel that every clone boots."""
    return f"{base.removesuffix('.img')}.{what}"


def remove_beside(base: str) -> None:
    for p in (beside(base, "json"), beside(base, "vmlinuz"), beside(base, "initrd")):
        if os.path.lexists(p):
            os.unlink(p)
