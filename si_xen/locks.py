"""Lock files that vanish with their holder (nothing left behind) yet never let two in."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager


@contextmanager
def exclusive(path: str, wait: bool = True):
    """Hold ``path`` exclusively. Raises BlockingIOError when busy and not ``wait``.

    The file is removed on release; a waiter that locked the removed inode notices and
    tries again on the new one, so removal cannot let two holders in."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            mine = os.fstat(fd)
            now = os.stat(path)
        except FileNotFoundError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
            break
        os.close(fd)
    try:
        yield
    finally:
        os.unlink(path)
        os.close(fd)
