"""Copy-on-write clones: the first VM of an image builds a base disk per filesystem;
later VMs get reflinks of it (XFS, btrfs) and only their own fixups are written.

Bases live beside the VMs (reflinks cannot cross filesystems), named by image, image
fingerprint, filesystem and size, so a changed image or another size gets a new base.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile

from ..locks import exclusive

FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)
BASE_DIR = "bases"


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


class BaseCache:
    def __init__(self, storage_root: str):
        self.dir = os.path.join(storage_root, BASE_DIR)

    def path(self, image: str, fingerprint: str, disk) -> str:
        return os.path.join(self.dir, f"{image}-{fingerprint}-{disk.name}-{disk.fs}-{disk.size_mib}M.img")

    def have(self, path: str) -> bool:
        return os.path.isfile(path) and os.path.isfile(path + ".json")

    def locked(self, image: str):
        """One builder per image at a time (parallel batch workers wait here)."""
        return exclusive(os.path.join(self.dir, f".{image}.lock"))

    def publish(self, tmp: str, path: str, meta: dict) -> None:
        """Make a fully built base visible (atomic renames; the .json marks it complete)."""
        os.replace(tmp, path)
        with open(path + ".json.tmp", "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(path + ".json.tmp", path + ".json")


def beside(base: str, what: str) -> str:
    """A file kept with a base, e.g. the guest kernel that every clone boots."""
    return f"{base.removesuffix('.img')}.{what}"


def remove_base(path: str) -> None:
    for p in (path + ".json", beside(path, "vmlinuz"), beside(path, "initrd"), path):
        if os.path.lexists(p):
            os.unlink(p)
