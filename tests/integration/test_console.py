"""--start --console with a fake xl: once the domain exists, however its console ends (SIGHUP of
a dropped ssh session, SIGINT, a console that fails), the VM stays complete and running.

The deploy is real (loop devices, mkfs, the Debian 12 image); xl is a script on PATH that keeps
its domains in a directory and logs its calls, and Xen is said to run (si_xen.toolstack's
hypervisor_running is patched in the si_* process: nothing else of it is changed).
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import need_tools

from .harness import REPO, host_state, make_env

pytestmark = pytest.mark.integration
NAME = "con01"
OPTS = ["--memory", "512M", "--size", "2G", "--swap", "128M", "--dhcp", "--start", "--console"]

FAKE_XL = r'''#!/usr/bin/env python3
import os, re, signal, sys, time
state = os.environ["FAKE_XL_STATE"]
doms = os.path.join(state, "domains")
os.makedirs(doms, exist_ok=True)
args = sys.argv[1:]
with open(os.path.join(state, "calls"), "a") as f:
    f.write(" ".join(args) + "\n")

def console(name):
    rc = os.environ.get("FAKE_XL_CONSOLE_RC")
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))  # as xenconsole: restore, leave
    with open(os.path.join(state, "attached"), "w") as f:
        f.write(name)
    if rc:
        sys.exit(int(rc))
    while True:
        time.sleep(1)

if args[0] == "create":
    with open(args[-1]) as f:
        name = re.search(r'^name\s*=\s*"([^"]+)"', f.read(), re.M)[1]
    open(os.path.join(doms, name), "w").close()
    if "-c" in args:
        console(name)
elif args[0] == "list":
    print("Name                                        ID   Mem VCPUs      State   Time(s)")
    print("Domain-0                                     0  1024     2     r-----      10.0")
    for i, n in enumerate(sorted(os.listdir(doms)), 1):
        print(f"{n:<40} {i:>5}   512     1     -b----       1.0")
elif args[0] in ("destroy", "shutdown"):
    if args[0] == "shutdown" and os.environ.get("FAKE_XL_STUCK"):  # a guest that never shuts down
        time.sleep(3600)
    try:
        os.unlink(os.path.join(doms, args[-1]))
    except FileNotFoundError:
        sys.exit(1)
elif args[0] == "console":
    console(args[1])
'''

# The si_* command as installed, with Xen said to run.
RUNNER = ("import runpy, sys, si_xen.toolstack as t; t.hypervisor_running = lambda: True; "
          "prog = sys.argv.pop(1); runpy.run_module('si_xen.cli.' + prog, run_name='__main__')")


def default_signals():
    """The signals si_mkxenvm is tested on reach it, whatever ignores them in the test's own
    process (run under nohup, SIGHUP is ignored and si_mkxenvm rightly keeps it ignored)."""
    for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


@pytest.fixture
def xen(tmp_path, debian12_image, as_root):
    need_tools("rsync", "mkfs.ext4", "mkswap", "losetup", "ssh-keygen")
    env = make_env(tmp_path / "e", os.path.dirname(debian12_image))
    bindir, state = tmp_path / "bin", tmp_path / "xl"
    bindir.mkdir()
    state.mkdir()
    (bindir / "xl").write_text(FAKE_XL)
    (bindir / "xl").chmod(0o755)
    environ = dict(os.environ, SIS_CONFDIR=env.confdir, PYTHONPATH=REPO, FAKE_XL_STATE=str(state),
                   PATH=f"{bindir}:{os.environ['PATH']}")

    def argv(prog, *args):
        return [sys.executable, "-c", RUNNER, prog, *args, "--config", env.config]

    groups = []  # what the test started, each in a session of its own: nothing outlives the test

    def popen(prog, *args, **env_extra):
        p = subprocess.Popen(argv(prog, *args), env=dict(environ, **env_extra), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, preexec_fn=default_signals, start_new_session=True)
        groups.append(p.pid)
        return p

    def run(prog, *args):
        p = popen(prog, *args)
        out, err = p.communicate(timeout=120)
        return p.returncode, out, err

    before = host_state(env.base, (NAME,))
    yield env, state, popen, run, argv, environ, groups
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert host_state(env.base, (NAME,)) == before, "loop devices, mounts or temp dirs left behind"


def wait_for(path, proc, seconds=600):
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"si_mkxenvm ended before its console was attached ({proc.returncode}):\n{out}\n{err}")
        assert time.monotonic() < deadline, "no console attached"
        time.sleep(0.2)


@pytest.mark.parametrize("how", ["SIGHUP", "SIGINT", "console exits 1"])
def test_the_console_ends_the_vm_stays(xen, how):
    env, state, popen, run, *_ = xen
    extra = {"FAKE_XL_CONSOLE_RC": "1"} if how == "console exits 1" else {}
    p = popen("mkxenvm", "debian12", "--hostname", NAME, *OPTS, "--dir", env.dir, "--output", env.output, **extra)
    wait_for(state / "attached", p)
    if how.startswith("SIG"):
        time.sleep(0.5)  # attached a while, as an admin is
        p.send_signal(getattr(signal, how))  # to si_mkxenvm only: it must end its console itself
    out, err = p.communicate(timeout=60)
    ended = f"by {how}" if how.startswith("SIG") else "(exit status 1)"
    assert p.returncode == 0, f"{out}\n{err}"
    assert "FATAL" not in err and "Traceback" not in err
    assert f"console closed {ended}; VM {NAME} keeps running (xl console {NAME} to attach again)" in out
    assert "Installation Summary" in out and out.index("Installation Summary") < out.index("Attaching the console")
    kept(env, state, run)


def kept(env, state, run):
    """The VM is there whole and running, as any other; then removed whole, its domain stopped."""
    calls = (state / "calls").read_text().splitlines()
    assert f"create {env.output}/{NAME}.cfg" in calls and f"console {NAME}" in calls  # created without -c
    assert not any(c.startswith("destroy") for c in calls), calls
    assert os.listdir(state / "domains") == [NAME], "the domain is running"
    assert os.path.exists(f"{env.output}/{NAME}.cfg")
    assert sorted(os.listdir(f"{env.dir}/domains/{NAME}")) == ["disk.img", "initrd.img", "swap.img", "vmlinuz"]
    rc, ls, err = run("lsxenvm", "--json")
    rec = json.loads(ls.splitlines()[0])
    assert rc == 0 and rec["name"] == NAME and rec["complete"] and rec["state"] == "running", ls + err
    assert os.listdir(env.lock) == [], "lock left behind"
    # what stays is a VM like any other: removed whole, its domain stopped
    rc, out, err = run("rmxenvm", NAME, "--yes", "--stop")
    assert rc == 0 and os.listdir(state / "domains") == [], out + err
    assert not os.path.exists(f"{env.dir}/domains/{NAME}")


def test_a_hung_up_terminal_ends_only_the_console(xen):
    """As an ssh session that drops: si_mkxenvm leads the session of a pty whose master is closed
    while it is attached; the kernel sends SIGHUP, and writes to the terminal fail (EIO)."""
    env, state, _, run, argv, environ, groups = xen
    cmd = argv("mkxenvm", "debian12", "--hostname", NAME, *OPTS, "--dir", env.dir, "--output", env.output)
    pid, fd = pty.fork()
    if pid == 0:
        try:
            default_signals()
            os.execve(cmd[0], cmd, environ)
        finally:
            os._exit(127)
    groups.append(pid)  # the pty's session leader
    shown, deadline = b"", time.monotonic() + 600
    while not (state / "attached").exists() and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.2)[0]:  # drained, or it would block on a full terminal
            try:
                shown += os.read(fd, 65536)
            except OSError:
                break  # it ended
    time.sleep(0.5)
    os.close(fd)  # the hang-up
    end = time.monotonic() + 120
    while not (ended := os.waitpid(pid, os.WNOHANG))[0] and time.monotonic() < end:
        time.sleep(0.2)
    assert ended[0] == pid, "si_mkxenvm still runs 120 s after its terminal hung up"
    status = ended[1]
    log = open(f"{env.base}/log/{NAME}.log").read()
    assert os.waitstatus_to_exitcode(status) == 0, shown.decode(errors="replace") + log
    assert "Attaching the console" in shown.decode(errors="replace")
    assert f"console closed by SIGHUP; VM {NAME} keeps running (xl console {NAME} to attach again)" in log
    kept(env, state, run)
