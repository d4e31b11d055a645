"""Confinement against the dom0's real /etc: a decoy bind-mounted over it in a private mount
namespace (root, unshare), and a hostile guest whose files are links to the real names."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import require
from tests.unit.fixups.test_confinement import hostile, make_decoy
from tests.unit.fixups.trees import snapshot

from .harness import REPO

pytestmark = pytest.mark.integration


def test_in_private_mount_namespace_with_decoy_etc(tmp_path):
    """Links to the real names (/etc/hostname...) with a decoy bind-mounted over /etc."""
    require(os.geteuid() == 0 and shutil.which("unshare") is not None, "needs root and unshare")
    dom0, root = str(tmp_path / "dom0"), str(tmp_path / "guest")
    make_decoy(dom0)
    before = snapshot(dom0)
    hostile(root, "/")  # links name /etc/hostname, ../../etc/hosts, /etc/ssh ...
    code = ("import subprocess, sys; subprocess.run(['mount', '--bind', sys.argv[1] + '/etc', '/etc'], check=True);"
            "from si_xen.fixups import run_all; from tests.unit.fixups.conftest import STATIC;"
            "run_all(sys.argv[2], STATIC); run_all(sys.argv[2], STATIC)")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", code, dom0, root],
                       cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert snapshot(dom0) == before
