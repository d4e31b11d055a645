"""SSH host keys for a VM: made by the dom0's ssh-keygen, ahead of need.

An RSA key takes ssh-keygen 0.2-2 s (a random prime search), longer than cloning a whole
VM. So si_mkxenvm keeps a small stock of RSA keys, made with spare CPU
(at idle priority, during the long copy of a first deploy) and each handed to one VM only; without stock it
starts ssh-keygen as soon as it knows the VM's name. Either way the identity fixup takes
the ready keys from the guest spec instead of making them itself. The stock is root's
alone (0700), like the keys ssh-keygen would have written into the guest. Which keys a VM
gets is sshdconfig's; reading and re-commenting key files, keyfiles'.
"""

from __future__ import annotations

import os
import shutil
import tempfile

from . import keyfiles, proc

STOCK_TYPES = ("rsa",)  # the slow one; ECDSA and Ed25519 keys take a millisecond, DSA is obsolete
STOCK_SIZE = 4


def tag(hostname: str) -> str:
    return f"si-xen:root@{hostname or 'localhost'}"


def _keygen(ktype: str, comment: str, path: str, idle: bool = False):
    keygen = proc.which("ssh-keygen")
    if not keygen:
        return None
    # stock: only CPU nothing else wants (SCHED_IDLE yields to every other task, even nice 19)
    idle_prefix = ["chrt", "--idle", "0"] if idle and proc.which("chrt") else []
    return proc.start([*idle_prefix, keygen, "-q", "-t", ktype, "-N", "", "-C", comment, "-f", path])


class Stock:
    """Unused host keys made ahead of time: TYPE-ID and TYPE-ID.pub in a root-only directory."""

    def __init__(self, state_dir: str):
        self.dir = os.path.join(state_dir, "hostkeys")

    def _keys(self, ktype: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.dir) if n.startswith(ktype + "-") and not n.endswith(".pub"))
        except FileNotFoundError:
            return []

    def claim(self, ktype: str, dest: str) -> bool:
        """Move one stock key to ``dest`` (same filesystem); renaming it is the claim."""
        for name in self._keys(ktype):
            try:
                os.rename(os.path.join(self.dir, name), dest)
            except FileNotFoundError:
                continue  # another si_mkxenvm took it first
            os.rename(os.path.join(self.dir, name + ".pub"), dest + ".pub")
            return True
        return False

    def refill(self) -> Refill:
        """Start making the missing stock keys; ``tick`` it now and then, ``settle`` it at the end."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        r = Refill(self, [t for t in STOCK_TYPES for _ in range(STOCK_SIZE - len(self._keys(t)))])
        r.tick()
        return r

    def settle(self, refill: Refill) -> None:
        refill.settle()

    def put(self, ktype: str, path: str) -> None:
        """A whole key pair at ``path`` (same filesystem) into the stock."""
        self._place(path, f"{ktype}-{os.urandom(6).hex()}")

    def _place(self, path: str, name: str) -> None:
        os.rename(path + ".pub", os.path.join(self.dir, name + ".pub"))  # the public half first: a
        os.rename(path, os.path.join(self.dir, name))  # private key in stock always has its pair

    def _adopt(self, path: str, done: bool) -> None:
        """A refill's key at .new-NAME: into the stock as NAME when done, else removed."""
        if done:
            self._place(path, os.path.basename(path)[len(".new-"):])
        else:
            for f in (path, path + ".pub"):
                if os.path.lexists(f):
                    os.unlink(f)


class Refill:
    """Stock keys made one per spare core at a time: four RSA keys made together on two cores
    would each take four times as long, and none would be done by the end of a copy."""

    def __init__(self, stock: Stock, todo: list[str]):
        self.stock, self.todo = stock, todo
        self.running: list[tuple[str, object]] = []
        self.spare = max(1, (os.cpu_count() or 1) - 1)

    def __bool__(self) -> bool:
        return bool(self.todo or self.running)

    def tick(self) -> None:
        """Keep the keys that are done and start the next ones (never waits)."""
        for path, p in list(self.running):
            if p.poll() is not None:
                self.running.remove((path, p))
                self.stock._adopt(path, p.returncode == 0)
        while self.todo and len(self.running) < self.spare:
            t = self.todo.pop(0)
            path = os.path.join(self.stock.dir, f".new-{t}-{os.urandom(6).hex()}")
            p = _keygen(t, tag(""), path, idle=True)
            if p is None:
                self.todo.clear()
                break
            self.running.append((path, p))

    def settle(self) -> None:
        """Keep the keys that are done; stop and discard the rest (no time is spent waiting)."""
        self.todo.clear()
        self.tick()
        for path, p in self.running:
            p.kill()
            p.wait()
            self.stock._adopt(path, False)
        self.running.clear()


class Prefetch:
    """A VM's host keys: taken from the stock, or ssh-keygen running in the background."""

    def __init__(self, types: list[str], hostname: str, stock: Stock | None = None):
        if stock and not os.path.isdir(stock.dir):
            stock = None  # made by a deploy's refill; before validation nothing may be created
        # beside the stock (a claim is a rename), else in /tmp
        self.dir = tempfile.mkdtemp(prefix=".si-xen-keys.", dir=stock.dir if stock else None)
        self.stock, self.handed = stock, False
        self.procs, self._idle = {}, []
        try:
            self._start(types, hostname, stock)
        except BaseException:  # a claimed stock key goes back, no ssh-keygen outlives us
            self.close()
            raise

    def _start(self, types: list[str], hostname: str, stock: Stock | None) -> None:
        for t in types:
            path = os.path.join(self.dir, t)
            if stock and stock.claim(t, path):
                if keyfiles.recomment(path, tag(hostname)):
                    continue  # the VM's name as the comment, as if made now
                for f in (path, path + ".pub"):  # not ours to rewrite: a new one instead
                    os.unlink(f)
            # The slow ones take idle CPU while a copy runs; ready() raises them if still wanted.
            p = _keygen(t, tag(hostname), path, idle=t in STOCK_TYPES)
            if p:
                self.procs[t] = p
                if t in STOCK_TYPES:
                    self._idle.append(p)

    def ready(self) -> str:
        """Wait for the keys; return the directory holding TYPE and TYPE.pub files. From now
        on they are the VM's: close() never gives them back to the stock."""
        self.handed = True
        for p in self._idle:
            if p.poll() is None:  # now the deploy waits for it: a normal share of the CPU
                proc.run(["chrt", "--other", "-p", "0", str(p.pid)], ok=(0, 1))
        for p in self.procs.values():
            p.wait()
        return self.dir

    def close(self) -> None:
        """End the key makers; keys no guest was given (the deploy stopped before its identity
        fixup, e.g. at a FATAL check) go back to the stock, so bad input costs no stock key."""
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
        if self.stock and not self.handed:
            for t in STOCK_TYPES:
                path = os.path.join(self.dir, t)
                # claimed, or made to the end: a killed ssh-keygen may have left half a key
                made = t not in self.procs or self.procs[t].returncode == 0
                if made and os.path.exists(path) and os.path.exists(path + ".pub"):
                    self.stock.put(t, path)
        shutil.rmtree(self.dir, ignore_errors=True)


def take(ktype: str, comment: str, d: str | None) -> tuple[str, str] | None:
    """A prefetched (private, public) key pair of this type and comment in directory ``d``, if any."""
    if not d:
        return None
    try:
        with open(os.path.join(d, ktype)) as f:
            priv = f.read()
        with open(os.path.join(d, ktype + ".pub")) as f:
            pub = f.read()
    except OSError:
        return None
    if pub.split()[2:] != [comment]:
        return None
    os.unlink(os.path.join(d, ktype))  # each key serves one VM only
    return priv, pub
