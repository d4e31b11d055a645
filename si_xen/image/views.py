"""An image with overrides on top, as a tree of its own: SystemImager lays each override over
the image after it (later wins, nothing deleted); si-xen deploys from the result and never
writes into the image. The view hard-links every file of the image (rsync --link-dest) and
writes each override file anew (-I: a new inode, never an image inode changed in place), so
it costs a walk of the image and the overrides' bytes, not a copy.

Server images get their views in the pull cache (cache.Cached.view); a local image's live in
``CACHE/images/local/IMAGE.PATHHASH/view-SIG``, where SIG hashes the listings (names, sizes, times) of
the image and of each override: an image updated by si_getimage or a changed override gets a
new view, an unchanged one reuses its view.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil

from .. import locks, proc
from ..errors import Fatal

KEEP = 2  # views per local image: a deploy that started from the previous one still reads it
_COPIED = re.compile(r"Number of regular files transferred: ([\d,.]+)")


def make(dir_: str, name: str, base: str, layers: list[tuple[str, str]], run=None) -> tuple[str, list[int]]:
    """``dir_/name``: ``base`` with each layer (what, rsync source) copied over it in order by
    ``run(argv, what)`` (default: a local rsync), built in a staging dir and renamed into
    place; (path, files copied per layer). An existing view is returned as it is (its name says
    what it holds), marked as just used."""
    run = run or _rsync
    path = os.path.join(dir_, name)
    if os.path.isdir(path):
        os.utime(path)
        return path, []
    staging = os.path.join(dir_, ".staging-" + name)
    shutil.rmtree(staging, ignore_errors=True)
    done = []
    try:
        _rsync(["-aHS", "--numeric-ids", f"--link-dest={base}", base + "/", staging + "/"], "the image view")
        for what, src in layers:
            out = run(["-aHSI", "--numeric-ids", "--stats", src, staging + "/"], what).stdout
            m = _COPIED.search(out)
            done.append(int(re.sub(r"[,.]", "", m[1])) if m else 0)
        os.rename(staging, path)
        os.utime(path)  # rsync gave it the image's time: its own says when it was last used
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path, done


def _rsync(argv: list[str], what: str) -> proc.Result:
    try:
        return proc.run(["rsync", *argv])
    except proc.ProcError as e:
        tail = (e.result.stderr.strip().splitlines() or ["no message"])[-1]
        raise Fatal(f"copying {what} failed (rsync exit {e.result.returncode}: {tail})",
                    "check the free space of si-xen's cache_dir and run it again") from None


def listing(path: str) -> str:
    """rsync's listing of a tree (mode, size, time, name of every entry): what a view hashes."""
    return proc.run(["rsync", "-r", "--list-only", path + "/"]).stdout


class Local:
    """Views of a local image with overrides from SystemImager's override dir."""

    def __init__(self, cache_dir: str, lock_dir: str, image: str, path: str, overrides_dir: str):
        self.image, self.path, self.overrides_dir = image, path, overrides_dir
        # one dir per image path: two images of one name (a store's, a path's) never share views
        key = f"{image}.{hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:8]}"
        self.dir = os.path.join(cache_dir, "images", "local", key)
        self.lock_path = os.path.join(lock_dir, f"cache.local.{key}.lock")

    def override_path(self, name: str, source: str) -> str:
        from .remote import NAME_RE

        path = os.path.join(self.overrides_dir, name)
        if not NAME_RE.match(name) or not os.path.isdir(path):
            raise Fatal(f"override '{name}' not found in {self.overrides_dir}",
                        f"make the override tree there (DEFAULT_OVERRIDE_DIR, from {source}) or drop --override")
        return path

    def view(self, overrides: list[str], source: str = "built-in default") -> tuple[str, list[int]]:
        paths = [self.override_path(o, source) for o in overrides]
        with locks.exclusive(self.lock_path):
            os.makedirs(self.dir, exist_ok=True)
            sig = hashlib.sha256(listing(self.path).encode())
            for o, p in zip(overrides, paths, strict=True):
                sig.update(b"\0" + o.encode() + b"\0" + listing(p).encode())
            layers = [(f"override '{o}'", p + "/") for o, p in zip(overrides, paths, strict=True)]
            got = make(self.dir, f"view-{sig.hexdigest()[:16]}", self.path, layers)
            self._prune(got[0])
        return got

    def _prune(self, keep: str) -> None:
        """Staging leftovers of a killed build, and views beyond the newest KEEP."""
        views = []
        for n in os.listdir(self.dir):
            p = os.path.join(self.dir, n)
            if n.startswith(".staging-"):
                shutil.rmtree(p, ignore_errors=True)
            elif n.startswith("view-") and p != keep:
                views.append((os.stat(p).st_mtime, p))
        for _, p in sorted(views)[:max(0, len(views) - (KEEP - 1))]:
            shutil.rmtree(p, ignore_errors=True)
