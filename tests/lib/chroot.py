"""Fresh Debian chroots for package tests, piuparts-style.

A pristine ``debootstrap --variant=minbase SUITE`` is made once per suite and kept as a
tarball under ``$SI_XEN_TEST_CACHE/chroots/SUITE.tar``; every ``Chroot`` is a fresh copy of
it with /proc and a private /dev mounted (a tmpfs with its own device nodes, so removing the
chroot can never touch the host's /dev), all unmounted when it closes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import TEST_CACHE

MIRROR = os.environ.get("SI_XEN_TEST_MIRROR", "http://deb.debian.org/debian")
CACHE = Path(TEST_CACHE) / "chroots"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
       "DEBIAN_FRONTEND": "noninteractive", "TERM": "dumb"}
# Not part of the file list: kernel and runtime filesystems, scratch space, apt's and dpkg's
# own bookkeeping and logs, and man-db's cache (its index, and the cat pages that reading a
# page with man saves); piuparts ignores the same.
IGNORED = ("/proc", "/dev", "/sys", "/run", "/tmp", "/var/cache/apt", "/var/lib/apt", "/var/lib/dpkg",
           "/var/log/apt", "/var/log/dpkg.log", "/var/log/alternatives.log", "/var/cache/man")
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9), "tty": (5, 0)}


class ChrootError(Exception):
    pass


def _run(argv, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def pristine(suite: str) -> Path:
    """The cached minbase tarball of ``suite``, debootstrapped first if missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tar = CACHE / f"{suite}.tar"
    with open(CACHE / f"{suite}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one debootstrap per suite, even for concurrent runs
        if tar.is_file():
            return tar
        for stale in [p for p in CACHE.glob(f"{suite}.*") if p.is_dir()]:  # a build killed outright
            _unmount_below(stale)
            remove_tree(stale)
        work = Path(tempfile.mkdtemp(prefix=f"{suite}.", dir=CACHE))
        try:
            cp = _run(["debootstrap", "--variant=minbase", suite, str(work / "root"), MIRROR], timeout=1800)
            if cp.returncode:
                log = CACHE / f"{suite}.failed.log"
                log.write_text(cp.stdout + cp.stderr)
                last = [line for line in (cp.stdout + cp.stderr).splitlines() if line.startswith(("E:", "W:"))]
                raise ChrootError(f"debootstrap {suite} from {MIRROR} failed ({cp.returncode}): "
                                  f"{(last or ['?'])[-1]}; log: {log}")
            shutil.rmtree(work / "root" / "var/cache/apt/archives", ignore_errors=True)
            cp = _run(["tar", "--numeric-owner", "--xattrs", "-C", str(work / "root"), "-cf", str(work / "t.tar"), "."])
            if cp.returncode:
                raise ChrootError(f"tar of the {suite} chroot failed: {cp.stderr.strip()}")
            os.replace(work / "t.tar", tar)
        finally:
            _unmount_below(work)  # a debootstrap killed at its timeout leaves its /proc, /sys
            remove_tree(work)
    return tar


def _mounts_below(path: Path) -> list[str]:
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [m for m in points if m == str(path) or m.startswith(f"{path}/")]


def _unmount_below(path: Path) -> None:
    for mount in sorted(_mounts_below(path), reverse=True):
        _run(["umount", "-l", mount])


def remove_tree(path: Path) -> None:
    """rm -rf, refused while anything is mounted below ``path`` (it would reach into the mount)."""
    if left := _mounts_below(path):
        raise ChrootError(f"still mounted, {path} kept: {left}")
    _run(["rm", "-rf", "--one-file-system", str(path)])


class Chroot:
    """``with Chroot("bookworm", parent) as c: c.run("apt-get", "update")``"""

    def __init__(self, suite: str, parent: str | Path):
        self.suite, self.parent = suite, Path(parent)
        self.base: Path | None = None
        self.root = Path()
        self.mounted: list[Path] = []

    def __enter__(self) -> Chroot:
        tar = pristine(self.suite)
        self.base = Path(tempfile.mkdtemp(prefix=f"chroot-{self.suite}.", dir=self.parent))
        self.root = self.base / "root"
        self.root.mkdir()
        try:
            cp = _run(["tar", "--numeric-owner", "--xattrs", "-C", str(self.root), "-xf", str(tar)])
            if cp.returncode:
                raise ChrootError(f"cannot extract {tar}: {cp.stderr}")
            self._mount("proc", "proc", "proc")
            self._mount("tmpfs", "dev", "tmpfs", "mode=0755,size=16m")
            dev = self.root / "dev"
            for name, (major, minor) in DEVICES.items():
                os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
                os.chmod(dev / name, 0o666)  # mknod's mode is cut by the umask
            for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                                 ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")):
                os.symlink(target, dev / name)
            (dev / "shm").mkdir()
            (dev / "pts").mkdir()
            self._mount("devpts", "dev/pts", "devpts", "newinstance,ptmxmode=0666,mode=0620")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _mount(self, source: str, where: str, fstype: str, options: str = "") -> None:
        path = self.root / where
        cp = _run(["mount", "-t", fstype, *(["-o", options] if options else []), source, str(path)])
        if cp.returncode:
            raise ChrootError(f"mount -t {fstype} {path}: {cp.stderr.strip()}")
        self.mounted.append(path)

    def __exit__(self, *exc) -> None:
        for path in reversed(self.mounted):
            if _run(["umount", str(path)]).returncode:
                _run(["umount", "-l", str(path)])  # a process still in it: detach now, gone when it ends
        self.mounted.clear()
        if self.base is not None:
            remove_tree(self.base)
            self.base = None

    def run(self, *argv: str, check: bool = True, timeout: float = 900, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` inside the chroot with a clean environment (plus ``env``)."""
        cp = subprocess.run(["chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in
                                                                           {**ENV, **(env or {})}.items()), *argv],
                            capture_output=True, text=True, timeout=timeout, input=input)
        if check and cp.returncode:
            raise ChrootError(f"in the {self.suite} chroot: {' '.join(argv)} -> {cp.returncode}\n"
                              f"{cp.stdout[-3000:]}\n{cp.stderr[-3000:]}")
        return cp

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def files(self) -> set[str]:
        """Every path in the chroot (a trailing / marks a directory, ' -> T' a link), outside IGNORED."""
        out: set[str] = set()
        root_dev = os.lstat(self.root).st_dev
        for d, dirs, names in os.walk(self.root):
            rel_d = "" if d == str(self.root) else "/" + os.path.relpath(d, self.root)
            keep = []
            for n in dirs:
                rel = f"{rel_d}/{n}"
                p = os.path.join(d, n)
                if rel in IGNORED or os.lstat(p).st_dev != root_dev:  # -xdev
                    continue
                if os.path.islink(p):
                    out.add(f"{rel} -> {os.readlink(p)}")
                else:
                    out.add(rel + "/")
                    keep.append(n)
            dirs[:] = keep
            for n in names:
                rel = f"{rel_d}/{n}"
                if rel in IGNORED:
                    continue
                p = os.path.join(d, n)
                out.add(f"{rel} -> {os.readlink(p)}" if os.path.islink(p) else rel)
        return out
