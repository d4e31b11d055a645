"""The one way si-xen writes a file that readers must see whole or not at all: written
beside it under a unique name, then renamed over it. Concurrent writers (two deploys
filling one cache entry) each rename a whole file; a writer killed mid-way leaves the old
one and, at worst, a dot-file beside it. No fsync: whole-or-nothing holds against a killed
process, not against a power cut.

Renames elsewhere are not write-then-rename of a file: whole trees and disks published once
built (image/cache.py's generations and trash, image/views.py, storage's bases), SSH keys
moved in and out of the stock (hostkeys.py: the rename is the claim), and a hard link in a
pull's private staging tree given its own inode (image/increment.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def _temp(path: str) -> tuple[int, str]:
    # mkstemp: O_EXCL, mode 0600 (a private key is never readable on the way), no symlink followed
    d = os.path.dirname(path) or "."
    return tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.")


def write(path: str, data: str | bytes, mode: int = 0o644) -> None:
    """``data`` (str or bytes) as the whole of ``path``, with ``mode``."""
    fd, tmp = _temp(path)
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@contextmanager
def replacing(path: str, mode: int = 0o644) -> Iterator[str]:
    """A new empty file beside ``path`` for the caller to fill (a copy, say); it becomes
    ``path`` when the block ends, and is removed if the block fails."""
    fd, tmp = _temp(path)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def symlink(target: str, path: str) -> None:
    """``path`` made a symlink to ``target`` in one step (readers see the old link or the new)."""
    tmp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{os.urandom(6).hex()}")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
