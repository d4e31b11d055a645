"""ssh-keygen faked with pytest-subprocess: writes a key pair where the real one would, so
the logic around it (stock, prefetch, identity fixup) runs without a real process."""

from __future__ import annotations

import base64
import os
import threading

from si_xen import proc


def _args(argv) -> dict[str, str]:
    argv = list(argv)
    return {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-t", "-C", "-f")}


def _s(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def openssh_key(kind: str, fields: int, comment: str) -> tuple[str, str]:
    """An unencrypted key pair in OpenSSH's format (PROTOCOL.key) with random key material."""
    pub = _s(kind.encode()) + _s(os.urandom(32))
    section = os.urandom(4) * 2 + _s(kind.encode()) + b"".join(_s(os.urandom(16)) for _ in range(fields))
    section += _s(comment.encode())
    section += bytes(range(1, 1 + (-len(section)) % 8))
    blob = b"openssh-key-v1\0" + _s(b"none") * 2 + _s(b"") + (1).to_bytes(4, "big") + _s(pub) + _s(section)
    text = base64.b64encode(blob).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    priv = "\n".join(["-----BEGIN OPENSSH PRIVATE KEY-----", *lines, "-----END OPENSSH PRIVATE KEY-----"]) + "\n"
    return priv, f"{kind} {base64.b64encode(pub).decode()} {comment}\n"


def _make(argv) -> None:
    a = _args(argv)
    kind, fields = {"rsa": ("ssh-rsa", 6), "dsa": ("ssh-dss", 5), "ecdsa": ("ecdsa-sha2-nistp256", 3)}.get(
        a["-t"], (f"ssh-{a['-t']}", 2))
    priv, pub = openssh_key(kind, fields, a["-C"])
    with open(a["-f"], "w") as f:
        f.write(priv)
    os.chmod(a["-f"], 0o600)
    with open(a["-f"] + ".pub", "w") as f:
        f.write(pub)


def register(fp, monkeypatch, running: bool = False) -> None:
    """Every ssh-keygen (also under ``chrt --idle``) makes its key at once; with ``running`` it is
    still making it until killed (and then leaves nothing, as its -f target is written last)."""
    real_which = proc.which
    monkeypatch.setattr(proc, "which", lambda p: f"/usr/bin/{p}" if p in ("ssh-keygen", "chrt") else real_which(p))
    killed: dict[int, threading.Event] = {}

    def busy(p):
        killed.setdefault(id(p), threading.Event()).wait(30)
        p.returncode = -9

    def kill(p, sig):
        killed.setdefault(id(p), threading.Event()).set()

    fp.register(["chrt", "--other", "-p", "0", fp.any()], occurrences=1000)  # a waited-for key raised
    for prefix in (["/usr/bin/ssh-keygen"], ["chrt", "--idle", "0", "/usr/bin/ssh-keygen"]):
        fp.register([*prefix, fp.any()], callback=busy if running else (lambda p: _make(p.args)),
                    signal_callback=kill, occurrences=1000)
