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


def _make(argv) -> None:
    a = _args(argv)
    if "-c" in argv:  # change the comment of an existing pair (a stock key given to a VM)
        with open(a["-f"] + ".pub") as f:
            kind, blob = f.read().split()[:2]
    else:
        kind = {"rsa": "ssh-rsa", "dsa": "ssh-dss"}.get(a["-t"], f"ssh-{a['-t']}")
        blob = base64.b64encode(os.urandom(48)).decode()
        with open(a["-f"], "w") as f:
            f.write(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{blob}\n-----END OPENSSH PRIVATE KEY-----\n")
        os.chmod(a["-f"], 0o600)
    with open(a["-f"] + ".pub", "w") as f:
        f.write(f"{kind} {blob} {a['-C']}\n")


def register(fp, monkeypatch, running: bool = False) -> None:
    """Every ssh-keygen (also under ``nice``) makes its key at once; with ``running`` it is
    still making it until killed (and then leaves nothing, as its -f target is written last)."""
    real_which = proc.which
    monkeypatch.setattr(proc, "which", lambda p: f"/usr/bin/{p}" if p in ("ssh-keygen", "nice") else real_which(p))
    killed: dict[int, threading.Event] = {}

    def busy(p):
        killed.setdefault(id(p), threading.Event()).wait(30)
        p.returncode = -9

    def kill(p, sig):
        killed.setdefault(id(p), threading.Event()).set()

    for prefix in (["/usr/bin/ssh-keygen"], ["nice", "-n", "19", "/usr/bin/ssh-keygen"]):
        fp.register([*prefix, fp.any()], callback=busy if running else (lambda p: _make(p.args)),
                    signal_callback=kill, occurrences=1000)
