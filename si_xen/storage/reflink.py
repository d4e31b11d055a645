"""Reflinks, the copy-on-write clones of files (XFS, btrfs): the file backend's clones of a
base disk, and the files kept beside a base (the guest kernel that every clone boots).

What a base disk is and when one is built: si_xen/bases.py.
"""

from __future__ import annotations

import fcntl
import os
import tempfile

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


def beside(base: str, what: str) -> str:
    """A file kept with a base, e.g. the guest kernel that every clone boots."""
    return f"{base.removesuffix('.img')}.{what}"

