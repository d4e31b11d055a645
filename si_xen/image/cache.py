"""This host's copy of a server's images: ``CACHE/images/SERVER/IMAGE/current -> gen-N``.

A pull goes into a staging generation that hard-links every unchanged file of the current one
(increment.py; rsync --link-dest where that cannot serve), so only changes travel and the
current generation is never touched; only
after rsync exits 0 is ``current`` switched (a symlink renamed over, atomic). A deploy therefore
reads a whole generation, old or new, never a half-pulled one. One lock per cached image: a
second deploy waits for the first one's pull and then finds the cache fresh. Views (the image
with overrides on top) are generations of their own, built the same way.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile

from .. import locks, proc
from ..errors import Fatal
from . import increment, remote, views
from .metadata import META_DIR
from .remote import Server

KEEP = 2  # current and previous: a deploy that started from the previous one still reads it
_STATS = {"files": r"Number of regular files transferred: ([\d,.]+)",
          "bytes": r"Total bytes received: ([\d,.]+)"}
_ITEM = re.compile(r"^(\*deleting|[<>ch.][fdLDS][.+a-zA-Z?]{9}) ")  # one --itemize-changes line


def stats(out: str) -> dict[str, int]:
    """rsync --stats: regular files transferred, bytes received."""
    got = {}
    for k, rx in _STATS.items():
        m = re.search(rx, out)
        got[k] = int(re.sub(r"[,.]", "", m[1])) if m else 0
    return got


def pull_flags(excludes=remote.IMAGE_EXCLUDES, acls: bool = True) -> list[str]:
    return [*remote.IMAGE_FLAGS, *(remote.ACL_FLAGS if acls else ()), "--delete", "--stats",
            *(f"--exclude={e}" for e in excludes)]


def _unsupported(e: Fatal) -> bool:
    return "not supported" in e.problem or "not supported" in e.fix


class Cached:
    """One server image in the cache; every method but ``current`` runs under ``lock()``."""

    def __init__(self, cache_dir: str, lock_dir: str, server: Server, image: str, via: Server | None = None):
        # Keyed by the server; reached through ``via`` (an ssh tunnel's local end) when given.
        self.server, self.image = via or server, image
        self.dir = os.path.join(cache_dir, "images", server.key, image)
        self.lock_path = os.path.join(lock_dir, f"cache.{server.key}.{image}.lock")

    def lock(self):
        return locks.exclusive(self.lock_path)

    def current(self) -> str | None:
        link = os.path.join(self.dir, "current")
        return os.path.realpath(link) if os.path.isdir(link) else None

    def _gens(self) -> list[int]:
        try:
            return sorted(int(n[4:]) for n in os.listdir(self.dir) if re.fullmatch(r"gen-\d+", n))
        except OSError:
            return []

    def _switch(self, name: str) -> None:
        tmp = os.path.join(self.dir, ".current.new")
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(name, tmp)
        os.replace(tmp, os.path.join(self.dir, "current"))

    def clean(self) -> None:
        """Leftovers of a pull that was killed (SIGKILL, power cut), and generations beyond KEEP."""
        for n in os.listdir(self.dir):
            if n.startswith(".staging"):
                shutil.rmtree(os.path.join(self.dir, n), ignore_errors=True)
        cur = self.current()
        gens = self._gens()
        for g in gens[:-KEEP]:
            path = os.path.join(self.dir, f"gen-{g}")
            if path != cur:
                shutil.rmtree(path, ignore_errors=True)
                if os.path.exists(f"{path}.disks-layout.xml"):
                    os.unlink(f"{path}.disks-layout.xml")
                for v in os.listdir(self.dir):
                    if v.startswith(f"view-{g}-"):
                        shutil.rmtree(os.path.join(self.dir, v), ignore_errors=True)

    def cached_time(self, path: str) -> str | None:
        try:
            with open(os.path.join(path, META_DIR.lstrip("/"), "IMAGE_RETRIEVAL_TIME")) as f:
                return remote.first_line(f.read())
        except OSError:
            return None

    def unchanged(self, cur: str) -> bool:
        """rsync's own comparison, for images without IMAGE_RETRIEVAL_TIME: a dry run that
        would change nothing."""
        out = remote.rsync(["-n", "-i", *pull_flags(acls=False), self.server.url(self.image) + "/", cur + "/"],
                           self.server, f"image '{self.image}'").stdout
        return not any(_ITEM.match(ln) for ln in out.splitlines())

    def pull(self, remote_time: str | None) -> tuple[str, dict[str, int] | None]:
        """The current generation, pulled first when the server's image changed. Returns
        (path, rsync stats or None when nothing was pulled)."""
        os.makedirs(self.dir, exist_ok=True)
        self.clean()
        cur = self.current()
        if cur and (remote_time == self.cached_time(cur) if remote_time else self.unchanged(cur)):
            return cur, None
        n = (self._gens() or [0])[-1] + 1
        staging = os.path.join(self.dir, f".staging-gen-{n}")
        try:
            st = self._rsync_into(staging, cur)
            os.rename(staging, os.path.join(self.dir, f"gen-{n}"))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._switch(f"gen-{n}")
        self.clean()
        return os.path.join(self.dir, f"gen-{n}"), st

    def _rsync_into(self, staging: str, cur: str | None) -> dict[str, int]:
        try:
            return self._pull_into(staging, cur, acls=True)
        except Fatal as e:
            if not _unsupported(e):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # one end lacks ACLs or xattrs: SI's flags alone
            return self._pull_into(staging, cur, acls=False)

    def _pull_into(self, staging: str, cur: str | None, acls: bool) -> dict[str, int]:
        src, what, flags = self.server.url(self.image) + "/", f"image '{self.image}'", pull_flags(acls=acls)
        if cur:
            listed = self._changes_into(staging, cur, src, what, flags)
            if listed is not None:
                return listed
        link = [f"--link-dest={cur}"] if cur else []
        return stats(remote.rsync([*flags, *link, src, staging + "/"], self.server, what).stdout)

    def _changes_into(self, staging: str, cur: str, src: str, what: str, flags: list[str]) -> dict[str, int] | None:
        """The incremental pull of increment.py; None when its dry run lists a name it cannot
        pass on (staging is then empty again)."""
        cp = proc.start(["cp", "-al", cur, staging])  # beside the dry run: one is disk, one is rsync
        try:
            out = remote.rsync(["-n", "--out-format=%i %n", *flags, src, cur + "/"], self.server, what).stdout
        except BaseException:  # the dry run's failure is the one to tell; the caller removes staging
            cp.kill()
            cp.wait()
            raise
        if cp.wait() != 0:
            raise Fatal(f"could not hard-link the cached image {cur} into {staging} (cp -al exit {cp.returncode})",
                        "check the cache's filesystem (space, inodes), then run it again")
        ch = increment.parse(out)
        if ch is None:
            shutil.rmtree(staging)
            return None
        names = increment.prepare(staging, ch)
        with tempfile.NamedTemporaryFile("wb", dir=self.dir, prefix=".staging-list.") as f:
            f.write(b"".join(n.encode(errors="surrogateescape") + b"\0" for n in names))
            f.flush()
            fetch = [a for a in flags if a != "--delete"]
            return stats(remote.rsync([*fetch, f"--files-from={f.name}", "--from0", src, staging + "/"],
                                      self.server, what).stdout)

    def layout(self, gen: str) -> str | None:
        """The server's scripts/disks-layouts/IMAGE.xml (si_getimage's copy of the image's
        layout), kept beside the generation; None when the server has none."""
        path = f"{gen}.disks-layout.xml"
        if not os.path.exists(path):
            url = self.server.url("scripts", "disks-layouts", f"{self.image}.xml")
            text = remote.fetch(self.server, [url], f"scripts/disks-layouts/{self.image}.xml")[url]
            with open(path + ".tmp", "w") as f:
                f.write(text or "")
            os.replace(path + ".tmp", path)
        with open(path) as f:
            return f.read() or None

    def view(self, gen: str, overrides: list[str]) -> tuple[str, list[int]]:
        """The generation with the overrides applied in order (views.make), kept while the
        image and the overrides' listings are unchanged; (path, files copied per override)."""
        sig = hashlib.sha256()
        for o in overrides:
            sig.update(o.encode() + b"\0" + self._listing(o).encode() + b"\0")
        layers = [(f"override '{o}'", self.server.url("overrides", o) + "/") for o in overrides]
        return views.make(self.dir, f"view-{os.path.basename(gen)[4:]}-{sig.hexdigest()[:16]}", gen, layers,
                          lambda argv, what: remote.rsync(argv, self.server, what))

    def _listing(self, override: str) -> str:
        return remote.rsync(["-r", "--list-only", self.server.url("overrides", override) + "/"],
                            self.server, f"override '{override}'").stdout

