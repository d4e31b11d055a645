"""The code base stays ruff clean (the rules are in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import require

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.allow_subprocess(reason="runs the ruff linter on the code base: a check of the tree, not of our logic")
def test_ruff_clean():
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    require(ruff is not None, "ruff is not installed (pip install ruff)")
    dirs = [d for d in ("si_xen", "hooks", "tests", "bench") if os.path.isdir(os.path.join(REPO, d))]
    cp = subprocess.run([ruff, "check", "--quiet", *dirs], cwd=REPO,
                        capture_output=True, text=True)
    assert cp.returncode == 0, cp.stdout + cp.stderr
