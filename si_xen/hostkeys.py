"""SSH host keys for a VM: made by the dom0's ssh-keygen, ahead of need.

An RSA key takes ssh-keygen 0.2-2 s (a random prime search), longer than cloning a whole
VM. So si_mkxenvm keeps a small stock of RSA keys, made with spare CPU
(at idle priority, during the long copy of a first deploy) and each handed to one VM only; without stock it
starts ssh-keygen as soon as it knows the VM's name. Either way the identity fixup takes
the ready keys from the guest spec instead of making them itself. The stock is root's
alone (0700), like the keys ssh-keygen would have written into the guest.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass

from . import proc, sshdconfig
from .errors import Fatal
from .guestfs import Guest, GuestPathError

STOCK_TYPES = ("rsa",)  # the slow one; ECDSA and Ed25519 keys take a millisecond, DSA is obsolete
STOCK_SIZE = 4
KEY_TYPES = {"rsa": "rsa", "dsa": "dsa", "ecdsa": "ecdsa", "ed25519": "ed25519"}
PUB_TYPES = {b"ssh-rsa": "rsa", b"ssh-dss": "dsa", b"ssh-ed25519": "ed25519"}  # and ecdsa-sha2-*
DEFAULT_TYPES = ("rsa", "ecdsa", "ed25519")  # what sshd loads with no HostKey line (servconf.c)
SSH1_KEY = "ssh_host_key"  # SSH-1's rsa1: no modern ssh-keygen makes one, no modern sshd loads it


@dataclass(frozen=True)
class HostKey:
    path: str  # absolute guest path of the private half; the public one is path + ".pub"
    type: str  # ssh-keygen -t
    loaded: bool  # sshd loads it (else a key the image had that sshd does not use)


def tag(hostname: str) -> str:
    return f"si-xen:root@{hostname or 'localhost'}"


def vm_keys(guest: Guest) -> list[HostKey]:
    """The host keys a VM of this image gets, fresh: every key its sshd loads (the HostKey lines
    of its sshd_config, else OpenSSH's defaults), whether or not the image has it (si_getimage
    leaves none), then any other key the image has in /etc/ssh (a golden client's key is never
    handed on). Each key's files are resolved now: a link loop stops the deploy before it starts."""
    conf = sshdconfig.host_keys(guest)
    if conf is None:  # no sshd: only the image's own keys are renewed
        keys = []
    elif conf:
        keys = [HostKey(p, _type(guest, p, where), True) for p, where in
                ((_absolute(p, where), where) for p, where in conf) if os.path.basename(p) != SSH1_KEY]
    else:
        keys = [HostKey(f"/etc/ssh/ssh_host_{t}_key", t, True) for t in DEFAULT_TYPES]
    for path in guest.glob("/etc/ssh", "ssh_host_*_key"):
        t = path.rsplit("/", 1)[1][len("ssh_host_"):-len("_key")]
        if t in KEY_TYPES:
            keys.append(HostKey(path, KEY_TYPES[t], False))
    out: dict[str, HostKey] = {}
    for k in keys:
        for f in (k.path, k.path + ".pub"):
            guest.path(f)  # GuestPathError on a loop
        out.setdefault(k.path, k)
    return list(out.values())


def key_types(guest: Guest) -> list[str]:
    """The types of :func:`vm_keys`, each once: what :class:`Prefetch` makes ahead."""
    return list(dict.fromkeys(k.type for k in vm_keys(guest)))


def _absolute(path: str, where: str) -> str:
    if path.startswith("~"):  # sshd would look in the home of the user it runs as
        raise Fatal(f"{where}: HostKey {path}: a path in a home directory",
                    "give HostKey an absolute path in the image's sshd config")
    return posixpath.normpath(path if path.startswith("/") else f"{sshdconfig.SSHDIR}/{path}")


def _type(guest: Guest, path: str, where: str) -> str:
    """The key type its file name tells (ssh_host_ed25519_key), else its public half in the image."""
    words = set(re.split(r"[^a-z0-9]+", os.path.basename(path).lower())) & set(KEY_TYPES)
    if len(words) == 1:
        return KEY_TYPES[words.pop()]
    pub = (guest.read_text(path + ".pub") or "").split()[:1]
    t = _pub_type(pub[0].encode()) if pub else None
    if t:
        return t
    raise Fatal(f"{where}: HostKey {path}: cannot tell the key type from the file name",
                "name the file after its type (rsa, ecdsa or ed25519, e.g. ssh_host_ed25519_key) "
                "in the image's sshd config, or put that key pair in the image")


def _pub_type(algo: bytes) -> str | None:
    return "ecdsa" if algo.startswith(b"ecdsa-sha2-") else PUB_TYPES.get(algo)


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
                if recomment(path, tag(hostname)):
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


# An unencrypted OpenSSH private key (PROTOCOL.key): magic, cipher/kdf "none", one public key,
# then the private section: two check words, the key type, its fields, the comment, padding.
_MAGIC = b"openssh-key-v1\0"
_FIELDS = {b"ssh-rsa": 6, b"ssh-ed25519": 2, b"ssh-dss": 5}  # ecdsa-sha2-*: 3
_ARMOR = ("-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----")


def _strings(buf: bytes, at: int, n: int) -> int:
    """The offset after ``n`` length-prefixed strings starting at ``at``."""
    for _ in range(n):
        size = int.from_bytes(buf[at:at + 4], "big")
        at += 4 + size
        if at > len(buf):
            raise ValueError("truncated key")
    return at


def _string(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def _unarmor(text: str) -> bytes | None:
    """The binary of an OpenSSH private key file; None if it is not one."""
    lines = text.split()
    if lines[:4] != _ARMOR[0].split() or lines[-4:] != _ARMOR[1].split():
        return None
    try:
        blob = base64.b64decode("".join(lines[4:-4]), validate=True)
    except ValueError:
        return None
    return blob if blob.startswith(_MAGIC) else None


def _public_half(text: str) -> bytes | None:
    """The public key an OpenSSH private key file holds (its first); None if not such a file."""
    blob = _unarmor(text)
    if blob is None:
        return None
    try:
        at = _strings(blob, len(_MAGIC), 3) + 4  # cipher, kdf, kdf options; the key count
        return blob[at + 4:_strings(blob, at, 1)]
    except ValueError:
        return None


def recomment(path: str, comment: str) -> bool:
    """Give a stock key pair its VM's comment, as ``ssh-keygen -c`` would, without starting
    it (a process start costs more than the rest of a further deploy's key work).
    False if the private key is not an unencrypted OpenSSH key (the caller makes a new one)."""
    try:
        with open(path) as f:
            blob = _unarmor(f.read())
        if blob is None:
            return False
        at = _strings(blob, len(_MAGIC), 3)  # cipher, kdf, kdf options
        if blob[len(_MAGIC):at] != _string(b"none") * 2 + _string(b""):
            return False  # encrypted: not one of ours
        at = _strings(blob, at + 4, 1)  # one public key
        section_at = at + 4
        body = blob[section_at:_strings(blob, at, 1)]
        ktype_end = _strings(body, 8, 1)
        ktype = body[12:ktype_end]
        fields = 3 if ktype.startswith(b"ecdsa-sha2-") else _FIELDS.get(ktype)
        if fields is None:
            return False
        keep = body[:_strings(body, ktype_end, fields)]
        with open(path + ".pub") as f:
            pub = f.read().split()[:2]
    except (OSError, ValueError, IndexError):
        return False
    new = keep + _string(comment.encode())
    new += bytes(range(1, 1 + (-len(new)) % 8))  # padding to the "none" cipher's 8-byte blocks
    text = base64.b64encode(blob[:at] + _string(new)).decode()
    armored = "\n".join([_ARMOR[0], *(text[i:i + 70] for i in range(0, len(text), 70)), _ARMOR[1]]) + "\n"
    for name, data in ((path, armored), (path + ".pub", " ".join([*pub, comment]) + "\n")):
        fd = os.open(name + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
        os.replace(name + ".tmp", name)
    return True


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


def fingerprint(pub_line: str) -> str:
    """`ssh-keygen -lf` format (SHA256), computed without running it."""
    parts = pub_line.split()
    return _fingerprint(base64.b64decode(parts[1]), parts[2:])


def _fingerprint(blob: bytes, comment: list[str]) -> str:
    kind = blob[4:_strings(blob, 0, 1)]
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    label = {b"ssh-rsa": "RSA", b"ssh-dss": "DSA", b"ssh-ed25519": "ED25519"}.get(kind, kind.split(b"-")[0].decode().upper())
    return " ".join([f"SHA256:{digest}", *comment, f"({label})"])


def fingerprints(guest: Guest) -> list[str]:
    """The fingerprints of the host keys a made VM's sshd serves (what ssh-keyscan sees; with no
    sshd, of all :func:`vm_keys`), each of the public half its private key file holds (a stale
    .pub file cannot mislead); the comment is the .pub file's."""
    try:
        keys = vm_keys(guest)
        keys = [k.path for k in ([k for k in keys if k.loaded] or keys)]
    except (Fatal, GuestPathError):  # the identity fixup was skipped: what /etc/ssh has
        keys = guest.glob("/etc/ssh", "ssh_host_*_key")
    out = []
    for path in keys:
        pub = (guest.read_text(path + ".pub") or "").split()
        blob = _public_half(guest.read_text(path) or "")
        try:
            if blob is None:
                blob = base64.b64decode(pub[1], validate=True)
            out.append(_fingerprint(blob, pub[2:]))
        except (IndexError, ValueError):
            pass  # not a key: nothing to show
    return out
