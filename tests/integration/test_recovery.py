"""A deploy killed with SIGKILL at each step boundary (a crash, the OOM killer, a power cut):
the journal names what was made, si_lsxenvm shows the VM as incomplete, a plain re-run is
refused with the way out, si_rmxenvm removes everything, and then a plain re-run works.

Real loop devices, mounts and disks; SI_XEN_KILL_AT makes the deploy SIGKILL itself as
the named step starts (journal.py), so each boundary is hit exactly.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from tests.conftest import need_tools

from .harness import host_state, make_env, tree_files

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "2G", "--swap", "128M", "--dhcp", "--autostart"]

# A one-filesystem full copy (mke2fs -d: no copy step), an XFS root (rsync copy), the golden
# client's layout (mke2fs -d per filesystem), and the first clone of an image on XFS.
CASES = {
    "full": (["--full-copy"], ["disks", "filesystems", "mount", "fixups", "boot", "unmount", "config",
                               "autostart", "record"]),
    "xfs": (["--full-copy", "--fs", "xfs"], ["copy"]),
    "layout": (["--full-copy", "--layout", "image"], ["filesystems", "mount"]),
    "clone": ([], ["bases", "base-disks", "base-filesystems", "base-publish", "disks", "mount"]),
    # a further clone: planned from the image's last walk, made while the new walk confirms it
    "further": ([], ["disks", "fixups", "confirm", "record"]),
}


def what_is_left(env, store: str, host: str) -> dict:
    files = [p for p in tree_files(store) if not p.startswith((f"{store}/bases", f"{store}/lost+found"))]
    return {"store": [p for p in files if p != f"{store}/domains"], "output": tree_files(env.output),
            "journal": os.path.exists(f"{env.state}/vms/{host}.journal"),
            "locks": sorted(os.listdir(env.lock)) if os.path.isdir(env.lock) else [],
            "bases_tmp": [p for p in tree_files(f"{store}/bases") if ".tmp" in p or os.path.basename(p).startswith(".")],
            **host_state(store, (host,))}


@pytest.fixture
def store(request, tmp_path, debian12_image):
    need_tools("rsync", "mkfs.ext4", "mkswap", "losetup")
    if getattr(request, "param", "full") in ("clone", "further"):
        return request.getfixturevalue("xfs_dir")
    d = tmp_path / "vms"
    d.mkdir()
    return str(d)


@pytest.mark.parametrize("store,case,step", [(c, c, s) for c, (_, steps) in CASES.items() for s in steps],
                         indirect=["store"])
def test_sigkill_at_each_step_then_si_rmxenvm_recovers(tmp_path, debian12_image, store, case, step, monkeypatch):
    env = make_env(tmp_path / "e", os.path.dirname(debian12_image))
    host = "crash1"
    argv = ["debian12", "--hostname", host, *OPTS, *CASES[case][0], "--dir", store, "--output", env.output]
    if case == "further":
        env.mk(*argv[:2], "seed", *argv[3:], check=True)
    clean = what_is_left(env, store, host)
    monkeypatch.setenv("SI_XEN_KILL_AT", step)
    killed = env.mk(*argv)
    monkeypatch.delenv("SI_XEN_KILL_AT")
    assert killed.returncode == -signal.SIGKILL, f"not killed at {step}:\n{killed.stdout}\n{killed.stderr}"

    listed = [json.loads(line) for line in env.run("lsxenvm", "--json", check=True).stdout.splitlines()]
    assert [(v["name"], v["complete"], v["step"]) for v in listed if v["name"] == host] == [(host, False, step)]
    again = env.mk(*argv)
    lines = again.stderr.strip().splitlines()
    assert again.returncode == 1 and len(lines) == 1, again.stderr
    assert lines[0].startswith(f"FATAL: VM '{host}' has an unfinished deploy") and f"si_rmxenvm {host}" in lines[0]

    rm = env.run("rmxenvm", "--yes", host)
    assert rm.returncode == 0, rm.stderr
    assert what_is_left(env, store, host) == clean, f"si_rmxenvm left something after a crash at {step}"

    env.mk(*argv, check=True)  # and a plain re-run completes
    env.run("rmxenvm", "--yes", "--prune-bases", host, check=True)
    assert what_is_left(env, store, host) == clean
    if case == "further":
        assert "Not kept" not in env.mk(*argv, "--force", "--yes", check=True).stdout, "the last walk holds"


def test_a_failed_step_is_named_and_its_command_logged(tmp_path, debian12_image, store, monkeypatch):
    """A command that fails (a stand-in mkswap on PATH): the FATAL line names the step and the
    command's error; the per-VM log has its argv, exit status and whole stderr; nothing is left."""
    env = make_env(tmp_path / "e", os.path.dirname(debian12_image))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mkswap").write_text("#!/bin/sh\necho 'first line of the story' >&2\n"
                                   "echo \"mkswap: cannot open $1: Device or resource busy\" >&2\nexit 3\n")
    (bindir / "mkswap").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    clean = what_is_left(env, store, "fail1")
    cp = env.mk("debian12", "--hostname", "fail1", *OPTS, "--full-copy", "--dir", store, "--output", env.output)
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 1 and len(lines) == 1, cp.stderr
    assert lines[0].startswith("FATAL: step 'disks' failed: mkswap exited 3: first line of the story | mkswap: cannot open")
    log = (tmp_path / "e" / "log" / "fail1.log").read_text()
    assert f"$ mkswap {store}/domains/fail1/swap.img" in log and "exit 3 after" in log
    assert "first line of the story" in log and "Device or resource busy" in log
    assert what_is_left(env, store, "fail1") == clean
