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
import threading

from .. import atomic, locks, proc
from ..errors import Fatal
from . import increment, remote, views
from .metadata import META_DIR
from .remote import Server

KEEP = 2  # current and previous: a deploy that started from the previous one still reads it
_STATS = {"files": r"Number of regular files transferred: ([\d,.]+)",
          "bytes": r"Total bytes received: ([\d,.]+)"}
_ITEMS = re.compile(r"^(\*deleting|[<>ch.][fdLDS][.+a-zA-Z?]{9}) ", re.M)  # --itemize-changes lines


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


def _remove(paths: list[str]) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def _unsupported(e: Fatal) -> bool:
    return "not supported" in e.problem or "not supported" in e.fix


class Cached:
    """One server image in the cache; every method but ``current`` runs under ``lock()``."""

    def __init__(self, cache_dir: str, lock_dir: str, server: Server, image: str, via: Server | None = None):
        # Keyed by the server; reached through ``via`` (an ssh tunnel's local end) when given.
        self.server, self.image = via or server, image
        self.dir = os.path.join(cache_dir, "images", server.key, image)
        self.lock_path = os.path.join(lock_dir, f"cache.{server.key}.{image}.lock")
        self.cleaner: threading.Thread | None = None  # removing old generations (clean)
        self.listings: dict[str, str] = {}  # override -> its listing, from has_files

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
        atomic.symlink(name, os.path.join(self.dir, "current"))

    def clean(self, later: bool = False) -> None:
        """Leftovers of a pull that was killed (SIGKILL, power cut), and generations beyond KEEP
        (``later``: renamed away now, removed by a thread while the deploy goes on: ~0.4 s of
        unlinking that no deploy waits for)."""
        for n in os.listdir(self.dir):
            if n.startswith((".staging", ".trash")):
                shutil.rmtree(os.path.join(self.dir, n), ignore_errors=True)
        cur = self.current()
        old = []
        for g in self._gens()[:-KEEP]:
            if os.path.join(self.dir, f"gen-{g}") != cur:
                old += [f"gen-{g}", *(v for v in os.listdir(self.dir) if v.startswith(f"view-{g}-"))]
                if os.path.exists(os.path.join(self.dir, f"gen-{g}.disks-layout.xml")):
                    os.unlink(os.path.join(self.dir, f"gen-{g}.disks-layout.xml"))
        trash = []
        for name in old:
            trash.append(os.path.join(self.dir, f".trash-{name}.{os.urandom(4).hex()}"))
            os.rename(os.path.join(self.dir, name), trash[-1])
        if trash:
            if later:
                self.cleaner = threading.Thread(target=_remove, args=(trash,), name="si-xen-clean")
                self.cleaner.start()
            else:
                _remove(trash)

    def cached_time(self, path: str) -> str | None:
        try:
            with open(os.path.join(path, META_DIR.lstrip("/"), "IMAGE_RETRIEVAL_TIME")) as f:
                return remote.first_line(f.read())
        except OSError:
            return None

    @property
    def src(self) -> str:
        return self.server.url(self.image) + "/"

    @property
    def what(self) -> str:
        return f"image '{self.image}'"

    def update(self) -> tuple[str, dict[str, int] | None]:
        """The current generation, pulled first when the server's image changed; the server's
        IMAGE_RETRIEVAL_TIME is asked while the dry run that lists the changes already walks
        (si_updateclient makes the server walk the whole image on every update; this walk is
        cut short when the time says unchanged). Returns (path, rsync stats or None)."""
        cur = self.current()
        dry = self._dry(cur, acls=True) if cur else None
        try:
            when, _ = remote.image_facts(self.server, self.image)
            return self.pull(when, dry)
        finally:
            if dry:
                dry.stop()  # nothing once its result was read

    def pull(self, remote_time: str | None, dry: remote.Begun | None = None) -> tuple[str, dict[str, int] | None]:
        """As update(), given the server's retrieval time (and the dry run begun, if any)."""
        os.makedirs(self.dir, exist_ok=True)
        self.clean()
        cur = self.current()
        if cur and remote_time and remote_time == self.cached_time(cur):
            return cur, None
        read: dict[bool, str] = {}  # a dry run's lines already read, by "with ACLs and xattrs"
        if cur and not remote_time:  # rsync's own comparison decides: a dry run that lists nothing
            if not _ITEMS.search(self._either(lambda acls: read.setdefault(acls, self._lines(cur, acls, dry)))):
                return cur, None
        n = (self._gens() or [0])[-1] + 1
        staging = os.path.join(self.dir, f".staging-gen-{n}")
        try:
            st = self._either(lambda acls: self._into(staging, cur, acls, read.get(acls), dry), staging)
            os.rename(staging, os.path.join(self.dir, f"gen-{n}"))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._switch(f"gen-{n}")
        self.clean(later=True)
        return os.path.join(self.dir, f"gen-{n}"), st

    @staticmethod
    def _either(attempt, staging: str | None = None):
        """``attempt(acls)`` with ACLs and xattrs kept, else (an end lacks them) with
        SystemImager's flags alone, ``staging`` emptied in between."""
        try:
            return attempt(True)
        except Fatal as e:
            if not _unsupported(e):
                raise
        if staging:
            shutil.rmtree(staging, ignore_errors=True)
        return attempt(False)

    def _dry(self, cur: str, acls: bool) -> remote.Begun:
        """rsync's dry run of a pull onto ``cur``: what it would change, a line an item."""
        return remote.Begun(["-n", "--out-format=%i %n", "--no-inc-recursive", *pull_flags(acls=acls), self.src,
                             cur + "/"], self.server, self.what)

    def _lines(self, cur: str, acls: bool, dry: remote.Begun | None) -> str:
        """The dry run's lines: the one begun beside the retrieval time (with ACLs), else a new one.
        The begun one failing gets one new try: a server whose `max connections` refused the
        second session at once takes it now."""
        if dry is not None and acls and not dry.waited:
            try:
                return dry.result().stdout
            except Fatal as e:
                if _unsupported(e):  # asking again would not help: the caller goes without ACLs
                    raise
        return self._dry(cur, acls).result().stdout

    def _into(self, staging: str, cur: str | None, acls: bool, lines: str | None, dry) -> dict[str, int]:
        if cur:
            got = self._changes_into(staging, cur, acls, lines, dry)
            if got is not None:
                return got
        link = [f"--link-dest={cur}"] if cur else []
        return stats(remote.rsync([*pull_flags(acls=acls), *link, self.src, staging + "/"], self.server,
                                  self.what).stdout)

    def _changes_into(self, staging: str, cur: str, acls: bool, lines: str | None, dry) -> dict[str, int] | None:
        """The incremental pull of increment.py (``lines``: the dry run's, if already read); None
        when its dry run lists a name it cannot pass on (staging is then empty again)."""
        cp = proc.start(["cp", "-al", cur, staging])  # beside the dry run: one is disk, one is rsync
        try:
            out = lines if lines is not None else self._lines(cur, acls, dry)
            cp.wait()
        finally:  # the dry run's failure (or ^C) is the one to tell; the caller removes staging
            if cp.poll() is None:
                cp.kill()
                cp.wait()
        if cp.returncode != 0:
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
            fetch = [a for a in pull_flags(acls=acls) if a != "--delete"]
            return stats(remote.rsync([*fetch, f"--files-from={f.name}", "--from0", self.src, staging + "/"],
                                      self.server, self.what).stdout)

    def layout(self, gen: str) -> str | None:
        """The server's scripts/disks-layouts/IMAGE.xml (si_getimage's copy of the image's
        layout), kept beside the generation; None when the server has none."""
        path = f"{gen}.disks-layout.xml"
        if not os.path.exists(path):
            url = self.server.url("scripts", "disks-layouts", f"{self.image}.xml")
            text = remote.fetch(self.server, [url], f"scripts/disks-layouts/{self.image}.xml")[url]
            atomic.write(path, text or "")
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
        """The override's listing (what a view's name hashes); one has_files asked is used once."""
        if override in self.listings:
            return self.listings.pop(override)
        return remote.rsync(["-r", "--list-only", self.server.url("overrides", override) + "/"],
                            self.server, f"override '{override}'").stdout

    def has_files(self, override: str) -> bool:
        """Whether the server's override holds anything but its top directory."""
        self.listings[override] = text = self._listing(override)
        return any(line.split(None, 4)[4:] != ["."] for line in text.splitlines() if line.strip())
