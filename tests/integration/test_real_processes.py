"""What only real processes show: proc.py's process-group kill, and the tree's lint.

(The unit tier starts no process at all: tests/unit/conftest.py fails any that it tries.)"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from si_xen import proc
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
