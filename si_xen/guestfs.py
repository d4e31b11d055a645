"""Confined access to an untrusted guest tree.

Every guest path is resolved as if the process were chrooted into the guest root: an
absolute symlink restarts at the guest root, ``..`` stops at it. Nothing here can reach a
file of the dom0 through a link planted in an image.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat

from . import atomic

_MAX_LINKS = 40


class GuestPathError(Exception):
    """A guest path that cannot be used as asked: a link loop, or a directory where a file
    must go. ``gpath`` is the guest path, ``root`` the guest root (for messages)."""

    def __init__(self, gpath: str, root: str, reason: str):
        self.gpath, self.root, self.reason = "/" + gpath.lstrip("/"), root, reason
        super().__init__(f"{self.gpath}: {reason} (in {root})")


class Guest:
    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def __repr__(self) -> str:
        return f"Guest({self.root!r})"

    # -- resolution -------------------------------------------------------------------
    def path(self, gpath: str, follow: bool = True) -> str:
        """Host path of guest path ``gpath``; the last component is followed if ``follow``."""
        todo = [c for c in gpath.split("/") if c not in ("", ".")]
        todo.reverse()
        done: list[str] = []
        links = 0
        while todo:
            comp = todo.pop()
            if comp == "..":
                if done:
                    done.pop()
                continue
            cand = os.path.join(self.root, *done, comp)
            if (follow or todo) and os.path.islink(cand):
                links += 1
                if links > _MAX_LINKS:
                    raise GuestPathError(gpath, self.root, "too many levels of symbolic links")
                target = os.readlink(cand)
                if target.startswith("/"):
                    done = []
                parts = [c for c in target.split("/") if c not in ("", ".")]
                todo.extend(reversed(parts))
                continue
            done.append(comp)
        return os.path.join(self.root, *done)

    # -- queries --------------------------------------------------------------------------
    def exists(self, gpath: str) -> bool:
        return os.path.lexists(self.path(gpath))

    def isfile(self, gpath: str) -> bool:
        return os.path.isfile(self.path(gpath))

    def isdir(self, gpath: str) -> bool:
        return os.path.isdir(self.path(gpath))

    def islink(self, gpath: str) -> bool:
        return os.path.islink(self.path(gpath, follow=False))

    def readlink(self, gpath: str) -> str:
        return os.readlink(self.path(gpath, follow=False))

    def read_text(self, gpath: str, default: str | None = None) -> str | None:
        """A regular file's text; ``default`` for anything else: absent, a directory, or a
        FIFO or device node (one blocks a reader, the other opens a dom0 device: never opened)."""
        host = self.path(gpath)
        if not os.path.isfile(host):
            return default
        fd = os.open(host, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)  # a FIFO by now: no hang either
        with open(fd, encoding="utf-8", errors="surrogateescape") as f:
            return f.read() if stat.S_ISREG(os.fstat(fd).st_mode) else default

    def facts(self, gpath: str) -> list[int] | None:
        """[mode, uid, gid, size, mtime_ns] of the entry itself (a link: the link), None if absent;
        a trailing / (a tree's prefix) names its directory."""
        try:
            st = os.lstat(self.path(gpath.rstrip("/") or "/", follow=False))
        except (FileNotFoundError, NotADirectoryError, GuestPathError):
            return None
        return [st.st_mode, st.st_uid, st.st_gid, st.st_size, st.st_mtime_ns]

    def listdir(self, gpath: str) -> list[str]:
        try:
            return sorted(os.listdir(self.path(gpath)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def glob(self, gdir: str, pattern: str) -> list[str]:
        """Guest paths of the entries of ``gdir`` whose name matches ``pattern``."""
        return [f"{gdir.rstrip('/')}/{n}" for n in self.listdir(gdir) if fnmatch.fnmatch(n, pattern)]

    # -- changes ----------------------------------------------------------------------
    def _wrote(self, host: str) -> None:
        """Told each host path written, made, linked or removed (RecordingGuest keeps them)."""

    def makedirs(self, gpath: str, mode: int = 0o755) -> str:
        """Create a guest directory; links on the way resolve inside the guest, and the
        missing rest cannot be a link (it does not exist yet)."""
        host = self.path(gpath)
        if not os.path.isdir(host):
            made, d = [], host
            while not os.path.isdir(d):
                made.append(d)
                d = os.path.dirname(d)
            os.makedirs(host, mode, exist_ok=True)
            for m in made:
                self._wrote(m)
        return host

    def write_text(self, gpath: str, text: str, mode: int | None = None) -> bool:
        """Atomically replace a guest file; return False if it already held ``text``."""
        host = self.path(gpath)
        if os.path.isdir(host):
            raise GuestPathError(gpath, self.root, "is a directory where a file must go")
        if os.path.isfile(host):
            with open(host, encoding="utf-8", errors="surrogateescape") as f:
                if f.read() == text and (mode is None or stat.S_IMODE(os.stat(host).st_mode) == mode):
                    self._wrote(host)  # the caller's file all the same
                    return False
            if mode is None:
                mode = stat.S_IMODE(os.stat(host).st_mode)
        d = self.makedirs(os.path.dirname(gpath) or "/")
        host = os.path.join(d, os.path.basename(host))
        atomic.write(host, text.encode("utf-8", "surrogateescape"), 0o644 if mode is None else mode)
        self._wrote(host)
        return True

    def copy_in(self, src: str, gpath: str, mode: int = 0o644) -> None:
        """Atomically replace a guest file with a copy of the host file ``src``."""
        host = self.path(gpath)
        if os.path.isdir(host):
            raise GuestPathError(gpath, self.root, "is a directory where a file must go")
        d = self.makedirs(os.path.dirname(gpath) or "/")
        host = os.path.join(d, os.path.basename(host))
        with atomic.replacing(host, mode) as tmp:
            shutil.copyfile(src, tmp)
        self._wrote(host)

    def unlink(self, gpath: str) -> bool:
        """Remove a file or link (never what a link points to); False if absent."""
        host = self.path(gpath, follow=False)
        self._wrote(host)  # absent or not: the caller's path
        if os.path.lexists(host) and not os.path.isdir(host) or os.path.islink(host):
            os.unlink(host)
            return True
        return False

    def symlink(self, target: str, gpath: str) -> bool:
        """Make ``gpath`` a link to ``target`` (a guest-side value, never resolved here)."""
        host = self.path(gpath, follow=False)
        if os.path.islink(host) and os.readlink(host) == target:
            self._wrote(host)
            return False
        self.makedirs(os.path.dirname(gpath) or "/")
        host = self.path(gpath, follow=False)
        if os.path.lexists(host):
            os.unlink(host)
        os.symlink(target, host)
        self._wrote(host)
        return True


class RecordingGuest(Guest):
    """A Guest that records in ``touched`` each guest path it writes, makes, links or removes
    (asked to remove), where the write lands (``/etc/hosts``; links on the way resolved); a
    tree written by other means is recorded by ``own`` as a prefix (``/lib/modules/6.1.0/``)."""

    def __init__(self, root: str):
        super().__init__(root)
        self.touched: set[str] = set()

    def _wrote(self, host: str, tree: bool = False) -> None:
        rel = host[len(self.root.rstrip("/")):]  # path() joins onto root: "", or "/etc/hosts"
        self.touched.add(f"{rel}/" if tree or not rel else rel)

    def own(self, gpath: str) -> None:
        self._wrote(self.path(gpath, follow=False), tree=True)
