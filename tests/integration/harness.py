"""Run the real si_* commands against a private SystemImager store and config."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class Env:
    base: str
    confdir: str
    config: str
    dir: str
    output: str
    state: str
    lock: str

    def run(self, prog: str, *args: str, check: bool = False, timeout: float = 600,
            wrapper: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        """``wrapper``: a command the si_* command runs under (e.g. setpriv dropping capabilities)."""
        env = dict(os.environ, SIS_CONFDIR=self.confdir, PYTHONPATH=REPO)
        argv = [*wrapper, sys.executable, "-m", f"si_xen.cli.{prog}", *args, "--config", self.config]
        cp = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode:
            raise AssertionError(f"{prog} {' '.join(args)} -> {cp.returncode}\n{cp.stdout}\n{cp.stderr}")
        return cp

    def mk(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("mkxenvm", *args, **kw)

    def popen_mk(self, *args: str) -> subprocess.Popen:
        env = dict(os.environ, SIS_CONFDIR=self.confdir, PYTHONPATH=REPO)
        argv = [sys.executable, "-m", "si_xen.cli.mkxenvm", *args, "--config", self.config]
        # SIGINT as from a terminal's Ctrl-C: a test run started in the background (`cmd &`) has
        # SIGINT ignored, and Python then keeps it ignored in the child, as it should.
        return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def make_env(tmp_path, images_dir: str) -> Env:
    base = str(tmp_path)
    e = Env(base, f"{base}/sis", f"{base}/xen.conf", f"{base}/vms", f"{base}/etc-xen", f"{base}/state", f"{base}/lock")
    for d in (e.confdir, e.dir, e.output):
        os.makedirs(d)
    with open(f"{e.confdir}/systemimager.conf", "w") as f:
        f.write(f"DEFAULT_IMAGE_DIR = {images_dir}\nRSYNC_STUB_DIR = {e.confdir}/rsync_stubs\n")
    with open(e.config, "w") as f:
        f.write(f"[paths]\nstate_dir = {e.state}\nlog_dir = {base}/log\nlock_dir = {e.lock}\n"
                f"template_dir = {base}/templates\n")
    return e


def debugfs_cat(image: str, path: str) -> str | None:
    """Read a file from an ext filesystem image without mounting it."""
    cp = subprocess.run(["debugfs", "-R", f"cat {path}", image], capture_output=True, text=True)
    return cp.stdout if cp.returncode == 0 and "File not found" not in cp.stderr else None


def debugfs_ls(image: str, path: str) -> list[str]:
    cp = subprocess.run(["debugfs", "-R", f"ls -l {path}", image], capture_output=True, text=True)
    return cp.stdout.splitlines()


def host_state(scope: str = "/", hosts: tuple[str, ...] = ()) -> dict:
    """What a run could leak: loop devices on files under ``scope``, their mounts, and
    si-xen's temporary mount points (scoped, so a concurrent test run does not count)."""
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
    ours = [line for line in loops if f"({scope}" in line or scope == "/"]
    devs = {line.split(":", 1)[0] for line in ours}
    with open("/proc/mounts") as f:
        mounts = [line for line in f if line.split()[0] in devs or scope in line.split()[1]]
    tmpdirs = [n for n in os.listdir("/run") if n.startswith("si-xen.")
               and (not hosts or n.split(".")[1] in hosts)]
    return {"loops": sorted(ours), "mounts": mounts, "run": sorted(tmpdirs)}


def tree_files(path: str) -> list[str]:
    out = []
    for d, dirs, files in os.walk(path):
        out += [os.path.join(d, n) for n in dirs + files]
    return sorted(out)


def manifest(root: str) -> str:
    """Metadata of every entry plus the content of etc/ and boot/: proves the image unchanged."""
    h = hashlib.sha256()
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for n in sorted(dirs + files):
            p = os.path.join(d, n)
            st = os.lstat(p)
            h.update(f"{p}|{st.st_mode}|{st.st_uid}|{st.st_gid}|{st.st_size}|{st.st_mtime_ns}".encode())
            if os.path.islink(p):
                h.update(os.readlink(p).encode())
            elif n in files and p.startswith((f"{root}/etc/", f"{root}/boot/")) and os.path.isfile(p):
                with open(p, "rb") as f:
                    h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


@contextmanager
def loop_fs(tmp_path, name: str, size: int, mkfs: list[str]):
    """A fresh filesystem (``mkfs`` argv, the image file appended) on a loop device, mounted
    at ``tmp_path/name`` while in the block."""
    img, mnt = tmp_path / f"{name}.img", tmp_path / name
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(size)
    subprocess.run([*mkfs, str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@contextmanager
def mounted(disk: str, where, ro: bool = False):
    """A VM's disk mounted at ``where`` while in the block (read-only without replaying its journal)."""
    os.makedirs(where, exist_ok=True)
    subprocess.run(["mount", "-o", "ro,loop,noload" if ro else "loop", disk, str(where)], check=True)
    try:
        yield str(where)
    finally:
        subprocess.run(["umount", str(where)], check=True)


def write(root, path: str, text: str) -> None:
    """A file written into a tree (an image, a mounted VM), its directories made; a link there replaced."""
    p = os.path.join(str(root), path.lstrip("/"))
    os.makedirs(os.path.dirname(p), exist_ok=True)
    if os.path.islink(p):
        os.unlink(p)
    with open(p, "w") as f:
        f.write(text)


def record(env: Env, name: str) -> dict:
    """The VM's record as si_lsxenvm --json gives it."""
    import json

    return json.loads(env.run("lsxenvm", "--json", name, check=True).stdout)


def tiny_image(images_dir) -> str:
    """A small fake Debian image (tests/unit/fakeimage.py) whose VMs get SSH host keys (an sshd_config:
    OpenSSH's default keys) and a /etc/motd of release 1: what the update and rebuild tests change."""
    from tests.unit import fakeimage

    image = fakeimage.make(os.path.join(str(images_dir), "tiny"), unpacked_mib=4)
    write(image, "/etc/motd", "release 1\n")
    write(image, "/etc/ssh/sshd_config", "PermitRootLogin no\n")
    return image
