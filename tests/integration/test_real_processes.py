"""What only real processes show: proc.py's process-group kill, ssh-keygen's own key format,
and the tree's lint.

(The unit tier starts no process at all: tests/unit/conftest.py fails any that it tries.)"""

import base64
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from si_xen import keyfiles, proc
from tests.conftest import require

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_stream_kills_the_whole_group_when_interrupted(tmp_path):
    pidfile = tmp_path / "child"

    def interrupt():
        while not pidfile.exists() or not pidfile.read_text().strip():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            proc.stream(["sh", "-c", f"sleep 30 & echo $! > {pidfile}; wait"], lambda line: None)
    finally:
        signal.signal(signal.SIGUSR1, old)
    grandchild = int(pidfile.read_text())
    time.sleep(0.2)
    try:
        with open(f"/proc/{grandchild}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z"), "the copy's helper processes must die with it"


def test_ruff_clean():
    """The code base stays ruff clean (the rules are in pyproject.toml)."""
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    require(ruff is not None, "ruff is not installed (pip install ruff)")
    dirs = [d for d in ("si_xen", "hooks", "tests", "bench") if os.path.isdir(os.path.join(REPO, d))]
    cp = subprocess.run([ruff, "check", "--quiet", *dirs], cwd=REPO, capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr


@pytest.mark.parametrize("ktype", ["rsa", "ed25519", "ecdsa"])
def test_recomment_writes_what_ssh_keygen_c_writes(tmp_path, ktype):
    """A stock key renamed for its VM in Python is ssh-keygen -c's result byte for byte, but
    for the private section's two random check words (ssh-keygen draws new ones)."""
    require(shutil.which("ssh-keygen") is not None, "ssh-keygen (openssh-client)")
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    subprocess.run(["ssh-keygen", "-q", "-t", ktype, "-N", "", "-C", "si-xen:root@localhost", "-f", ours], check=True)
    for suffix in ("", ".pub"):
        shutil.copy(ours + suffix, theirs + suffix)
    subprocess.run(["ssh-keygen", "-q", "-c", "-C", "si-xen:root@vm1", "-P", "", "-f", theirs], check=True,
                   stdout=subprocess.DEVNULL)
    assert keyfiles.recomment(ours, "si-xen:root@vm1")
    with open(ours + ".pub") as a, open(theirs + ".pub") as b:
        assert a.read() == b.read()

    def unchecked(path):
        with open(path) as f:
            text = f.read()
        assert all(len(line) <= 70 for line in text.splitlines())
        blob = base64.b64decode("".join(text.splitlines()[1:-1]))
        at = keyfiles._strings(blob, keyfiles._strings(blob, 15, 3) + 4, 1) + 4
        return blob[:at] + blob[at + 8:]

    assert unchecked(ours) == unchecked(theirs), f"{ktype} private key differs from ssh-keygen -c's"
    os.unlink(ours + ".pub")  # the comment is read from the private key itself
    out = subprocess.run(["ssh-keygen", "-l", "-f", ours], check=True, capture_output=True, text=True).stdout
    assert "si-xen:root@vm1" in out


def _slow(path):
    time.sleep(30)


def _fails():
    raise OSError("unreadable")


def test_ahead_returns_the_childs_result_or_none_and_close_stops_it(tmp_path):
    from si_xen.image.survey import survey

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "hostname").write_text("x\n")
    ahead = proc.Ahead(survey, str(tmp_path))
    assert ahead.result() == survey(str(tmp_path)), "the same walk, done in the child"
    assert proc.Ahead(_fails).result() is None, "a failed child: the caller does the work itself"
    slow = proc.Ahead(_slow, str(tmp_path))
    t0 = time.monotonic()
    slow.close()
    assert time.monotonic() - t0 < 5 and os.WIFSIGNALED(slow.status), "killed, not waited for"
    with pytest.raises(ChildProcessError):
        os.waitpid(slow.pid, 0)  # reaped: nothing outlives it
