"""Lock files that vanish with their holder (nothing left behind) yet never let two in.

flock(2) locks die with their process, so a holder killed by SIGKILL or a power cut holds
nothing: its leftover file is simply taken (and removed) by the next one. The file names
its holder's pid, so a busy lock can say who has it.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager


class LockBusy(BlockingIOError):
    """Held by a live process (``pid``, or None when it wrote none yet)."""

    def __init__(self, path: str, pid: int | None):
        super().__init__(f"{path} is held" + (f" by pid {pid}" if pid else ""))
        self.path, self.pid = path, pid


def holder(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


@contextmanager
def exclusive(path: str, wait: bool = True):
    """Hold ``path`` exclusively. Raises LockBusy when busy and not ``wait``.

    The file is removed on release; a waiter that locked the removed inode notices and
    tries again on the new one, so removal cannot let two holders in."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            mine = os.fstat(fd)
            now = os.stat(path)
        except BlockingIOError:
            os.close(fd)
            raise LockBusy(path, holder(path)) from None
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
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.unlink(path)
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user's too): a dead run's leftovers may go."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
