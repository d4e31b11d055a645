"""The Xen testbed: Xen 4.17 + a Debian 12 dom0 booted in QEMU (TCG), driven through disks.

`boot()` puts a directory and a `run` script on a payload disk, boots Xen and the dom0 (or the
dom0 kernel alone with xen=False), lets the dom0's runner unit execute the script once the
toolstack is up, and reads back what the script left in $TESTBED_RESULTS. QEMU, its disks and
temp files never outlive the call. Usable from pytest and from the demo script alike.
See shared/reference/xen-testbed.md for why each QEMU/Xen argument is what it is.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.lib import debpkg

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("SI_XEN_TEST_CACHE", "/var/cache/si-xen-tests"))
MARK = "@@ "  # dom0 runner marks the payload's console lines with this

XEN_ARGS = ("dom0_mem=1024M,max:1024M dom0_max_vcpus=2 console=com1 com1=115200,8n1 loglvl=all "
            "guest_loglvl=all console_timestamps=boot bootscrub=false conring_size=1M")  # room for every fault
DOM0_ARGS = "root=LABEL=si-dom0 rw console=hvc0 earlyprintk=xen"
LINUX_ARGS = "root=LABEL=si-dom0 rw console=ttyS0"


class TestbedError(RuntimeError):
    pass


@dataclass
class Disk:
    """An extra virtio disk, seen in dom0 as /dev/disk/by-id/virtio-SERIAL."""
    serial: str
    path: Path | None = None  # an existing image (opened snapshot=on: never changed)
    size: str = "8G"  # without a path: a sparse scratch disk of this size, deleted after


@dataclass
class Result:
    rc: int | None  # the payload script's exit status; None if it never finished
    qemu_rc: int | None  # None: QEMU was killed at the deadline
    results: Path  # what the script left in $TESTBED_RESULTS, plus dom0/ logs
    serial_log: Path
    timings: dict[str, float] = field(default_factory=dict)
    console: list[str] = field(default_factory=list)  # the script's lines, as streamed
    deadline: float = 0.0  # the bound the run was held to (s from QEMU start)

    @property
    def timed_out(self) -> bool:
        return self.qemu_rc is None

    def log(self) -> str:
        """The script's output: from the results disk, else what was streamed before the end."""
        p = self.results / "run.log"
        return p.read_text(errors="replace") if p.exists() else "\n".join(self.console)

    def tail(self, n: int = 60) -> str:
        src = self.log() or self.serial_log.read_text(errors="replace")
        return "\n".join(src.splitlines()[-n:])


def dom0(rebuild_log: Callable[[str], None] | None = None) -> Path:
    """The cached dom0 build (built on first use: minutes, needs the Debian mirror)."""
    t0 = time.monotonic()
    out = subprocess.run([str(HERE / "mkdom0"), str(CACHE / "dom0")], capture_output=True, text=True)
    if out.returncode != 0:
        raise TestbedError(f"dom0 build failed:\n{out.stderr[-3000:]}")
    if rebuild_log and out.stderr.strip():
        rebuild_log(f"{out.stderr.strip()} (total {time.monotonic() - t0:.0f} s)")
    return Path(out.stdout.strip().splitlines()[-1])


def ext4_image(src: Path, dest: Path, *, label: str, extra_mb: int = 256) -> Path:
    """An ext4 image holding a copy of src, made without mounting anything (mkfs.ext4 -d)."""
    used = subprocess.run(["du", "-sm", "--apparent-size", str(src)], capture_output=True, text=True,
                          check=True).stdout.split()[0]
    size_mb = int(int(used) * 1.25) + extra_mb
    with open(dest, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", str(src), str(dest)], check=True)
    return dest


def _qemu_child(priority: int) -> Callable[[], None]:
    """What QEMU's child does before exec (after setsid): die with the runner, whatever kills the
    runner; and take `priority` as its nice value, for the process and for the scheduler's
    autogroup its new session got (with autogroups on, sessions share the CPU by the group's
    nice value, not by the processes')."""
    def child() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if priority:
            os.setpriority(os.PRIO_PROCESS, 0, priority)
            try:
                with open("/proc/self/autogroup", "w") as f:
                    f.write(str(priority))
            except OSError:
                pass  # no autogroups in this kernel: the process's nice value is what counts
    return child


def _escape(arg: str) -> str:
    return arg.replace(",", ",,")  # QEMU's option syntax


def _qemu_argv(build: Path, tmp: Path, disks: Sequence[tuple[str, Path, bool]], *, xen: bool, mem: int,
               cpus: int, accel: str, nic: str = "none") -> list[str]:
    argv = ["qemu-system-x86_64", "-machine", "pc", "-accel", accel, "-cpu",
            "host" if accel == "kvm" else "qemu64,+npt", "-smp", str(cpus), "-m", str(mem),
            "-nic", nic, "-no-reboot", "-display", "none", "-monitor", "none",
            "-serial", f"file:{tmp / 'serial.log'}"]
    if xen:
        argv += ["-kernel", str(build / "xen"), "-append", XEN_ARGS,
                 "-initrd", f"{_escape(str(build / 'vmlinuz'))} {DOM0_ARGS},{_escape(str(build / 'initrd.img'))}"]
    else:
        argv += ["-kernel", str(build / "vmlinuz"), "-initrd", str(build / "initrd.img"), "-append", LINUX_ARGS]
    for i, (serial, path, snapshot) in enumerate(disks):
        opts = f"file={_escape(str(path))},format=raw,if=none,id=d{i},cache=unsafe"
        argv += ["-drive", opts + (",snapshot=on" if snapshot else ""),
                 "-device", f"virtio-blk-pci,drive=d{i},serial={serial}"]
    return argv


def boot(payload_dir: Path | None, script: str, *, xen: bool = True, timeout: float = 1200, mem: int = 3072,
         cpus: int = 2, disks: Sequence[Disk] = (), outdir: Path | None = None,
         on_console: Callable[[str], None] | None = None, nic: str = "none",
         cancel: threading.Event | None = None, priority: int = 0) -> Result:
    """Boot the testbed once, run `script` (bash) in dom0 with payload_dir as its cwd, return results.

    on_console gets every line the script prints, as it is printed (over the serial console).
    Results land in outdir (a new temp dir if None; the caller owns it). ``nic``: QEMU's -nic
    (none: no network; the Xen tier's image server: user networking, restrict=on, a guestfwd).
    `timeout` bounds the run until the script, calibrated, names its own deadline
    (`si-testbed: deadline N s`, counted from then): budgets follow this run's machine.
    A run stopped at its deadline returns what it streamed (Result.timed_out); it does not raise.
    ``cancel`` set ends the run the same way, at once (the session is ending). ``priority``: QEMU's
    nice value (and its session's), for runs that share the machine with others.
    """
    say = on_console or (lambda line: print(line, flush=True))
    build = dom0()
    outdir = Path(outdir or tempfile.mkdtemp(prefix="si-testbed-out."))
    outdir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="si-testbed.", dir=os.environ.get("SI_XEN_TESTBED_TMP", "/var/tmp")))
    proc = None
    try:
        t0 = time.monotonic()
        tree = tmp / "payload"
        if payload_dir:
            shutil.copytree(payload_dir, tree, symlinks=True)
        else:
            tree.mkdir()
        (tree / "run").write_text(script)
        attached = [("dom0", build / "dom0.ext4", True),
                    ("payload", ext4_image(tree, tmp / "payload.ext4", label="payload"), False)]
        results_img = tmp / "results.img"
        with open(results_img, "wb") as f:
            f.truncate(512 << 20)
        attached.append(("results", results_img, False))
        for d in disks:
            if d.path:
                attached.append((d.serial, d.path, True))
            else:
                scratch = tmp / f"{d.serial}.img"
                subprocess.run(["truncate", "-s", d.size, str(scratch)], check=True)
                attached.append((d.serial, scratch, False))
        shutil.rmtree(tree)
        accel = os.environ.get("SI_XEN_TESTBED_ACCEL", "tcg")
        argv = _qemu_argv(build, tmp, attached, xen=xen, mem=mem, cpus=cpus, accel=accel, nic=nic)
        timings = {"payload": time.monotonic() - t0}
        env = dict(os.environ, TMPDIR=str(tmp))  # QEMU's snapshot overlay goes here, and goes with it
        for attempt in (1, 2):
            t1 = time.monotonic()
            (tmp / "serial.log").write_bytes(b"")
            with open(tmp / "qemu.out", "wb") as out:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env, preexec_fn=_qemu_child(priority))
            watch = _Watch(proc, tmp / "serial.log", t1, timeout, on_console, timings, up_bound=dom0_up_bound(),
                           cancel=cancel)
            qemu_rc = watch.run()
            # Nothing of the script ran before dom0 was up, so booting again is safe: QEMU 7.2's
            # TCG has been seen to segfault while dom0 probes PCI, and to spin with the dom0
            # kernel silent after "sched_clock: Marking stable" (2026-12-02, 9 min, 181 % CPU).
            if attempt == 2 or "dom0_up" in timings or not (watch.stalled or qemu_rc not in (None, 0)):
                break
            why = f"dom0 not up after {watch.up_bound:.0f} s" if watch.stalled else f"QEMU died ({qemu_rc})"
            say(f"testbed: {why} before dom0 was up; booting again")
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            shutil.copy(tmp / "serial.log", outdir / "serial-attempt1.log")  # the evidence
            timings["boot_retry"] = time.monotonic() - t1
        timings["qemu"] = time.monotonic() - t1
        if qemu_rc is None:
            say(f"testbed: stopped {'on request' if cancel and cancel.is_set() else 'at its deadline'} "
                f"({time.monotonic() - t1:.0f} s)")
        shutil.copy(tmp / "serial.log", outdir / "serial.log")
        shutil.copy(tmp / "qemu.out", outdir / "qemu.out")
        (outdir / "console.log").write_text("\n".join(watch.lines) + "\n")
        res = outdir / "results"
        rc = _extract(results_img, res)
        return Result(rc, qemu_rc, res, outdir / "serial.log", timings, watch.lines, watch.deadline - t1)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # QEMU runs in its own session: only what we started
            proc.wait()
        if not (outdir / "serial.log").exists() and (tmp / "serial.log").exists():
            shutil.copy(tmp / "serial.log", outdir / "serial.log")  # interrupted: keep the evidence
        shutil.rmtree(tmp, ignore_errors=True)


def dom0_up_bound() -> float:
    """How long dom0 may take from QEMU's start to its runner before the boot counts as stuck:
    23-37 s measured quiet, 86 s on a busy host; 4x that, or SI_XEN_TESTBED_UP_BOUND."""
    return float(os.environ.get("SI_XEN_TESTBED_UP_BOUND", 360))


class _Watch:
    """Follow the serial log until QEMU exits or the deadline passes; record milestones.

    The deadline starts as `timeout` from QEMU's start; the script may replace it with its own
    calibrated one (`si-testbed: deadline N s`, N counted from when it says so)."""

    def __init__(self, proc: subprocess.Popen, serial: Path, t1: float, timeout: float, on_console, timings: dict,
                 up_bound: float = float("inf"), cancel: threading.Event | None = None):
        self.proc, self.serial, self.t1, self.on_console, self.timings = proc, serial, t1, on_console, timings
        self.cancel = cancel
        self.deadline = t1 + timeout
        self.up_bound, self.stalled = up_bound, False
        self.lines: list[str] = []

    def run(self) -> int | None:
        pos, partial = 0, b""
        while True:
            rc = self.proc.poll()
            with open(self.serial, "rb") as f:
                f.seek(pos)
                data = f.read()
            pos += len(data)
            lines = (partial + data).split(b"\n")
            partial = lines.pop()
            for raw in lines:
                line = raw.decode(errors="replace").rstrip("\r")
                i = line.find(MARK)
                if i >= 0:
                    self._line(line[i + len(MARK):])
            if rc is not None:
                return rc
            if time.monotonic() > self.deadline or (self.cancel is not None and self.cancel.is_set()):
                return None
            if "dom0_up" not in self.timings and time.monotonic() > self.t1 + self.up_bound:
                self.stalled = True  # dom0 never came up: the caller may boot again
                return None
            time.sleep(0.3)

    def _line(self, text: str) -> None:
        now = time.monotonic()
        if text.startswith("si-testbed: dom0 up") and "dom0_up" not in self.timings:
            self.timings["dom0_up"] = now - self.t1
        elif text.startswith("si-testbed: deadline "):
            try:
                self.deadline = now + float(text.split()[2])
                return
            except (IndexError, ValueError):
                pass  # garbled on the serial line: keep the bound we have, show the line
        self.lines.append(text)
        if self.on_console:
            self.on_console(text)


def _extract(img: Path, dest: Path) -> int | None:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(img) as tar:
            tar.extractall(dest, filter="data")
    except tarfile.ReadError:
        return None  # the script never got to write its results
    rc = dest / "rc"
    return int(rc.read_text().strip()) if rc.exists() else None


# The system tier's copy of the image is what a golden client prepared for Xen guests would be:
# only the drivers a PV/PVH guest can use (Xen's split frontends, block, net, char), no locales,
# docs or manuals, and si-xen's own Xen-sized initramfs (initramfs_slim: the image's read as data,
# nothing of it run) in place of Debian's MODULES=most one. It halves what each VM copies under TCG
# and cuts every boot of the xen-tools, image-server and Ganeti scenarios, whose kernels si_mkxenvm
# does not choose: Xen loads a 7.8 MB initramfs instead of 35 MB (bench/slimboot: 3 s of each boot). The
# article's 256 MB proofs (pvstatic, pygrub) are made from the image as the store holds it instead.
_MODULES = "/usr/lib/modules/*/kernel"
SLIM_FILTER = [
    f"- {_MODULES}/drivers/net/ethernet/", f"- {_MODULES}/drivers/net/wireless/",
    *(f"+ {_MODULES}/drivers/{d}/***" for d in ("block", "xen", "char", "net")),
    f"- {_MODULES}/drivers/*", f"- {_MODULES}/sound/",
    f"- {_MODULES}/net/wireless/", f"- {_MODULES}/net/mac80211/", f"- {_MODULES}/net/bluetooth/",
    "- /usr/share/locale/*/", "- /usr/share/doc/*", "- /usr/share/man/*", "- /usr/share/info/*",
]
SLIM_FSTYPES = ("ext4", "xfs")  # the tiers' guests' root filesystems
SLIM_VERSION = 3  # bump when what slim_tree() does changes (the cache key)


def slim_tree(image: Path, tree: Path) -> None:
    """Copy `image` to `tree` without SLIM_FILTER, then depmod (the host's, on the tree's modules)
    and si-xen's Xen-sized initramfs in place of each of the tree's."""
    from si_xen import initramfs_slim

    rules = [f"--filter={r}" for r in SLIM_FILTER]
    subprocess.run(["rsync", "-aHAXS", "--numeric-ids", *rules, f"{image}/", f"{tree}/"], check=True)
    for version in os.listdir(tree / "usr/lib/modules"):
        subprocess.run(["depmod", "-b", str(tree), version], check=True)
        initrd = tree / f"boot/initrd.img-{version}"
        tmp = initrd.with_name(initrd.name + ".slim")
        r = initramfs_slim.slim(str(initrd), str(tmp), SLIM_FSTYPES)
        if not r.slimmed:
            raise TestbedError(f"si-xen could not slim the test image's {initrd.name}: it {r.reason}")
        shutil.copystat(initrd, tmp)
        tmp.rename(initrd)


def _slim_version() -> int:
    from si_xen import initramfs_slim

    return initramfs_slim.VERSION  # what it writes changed: the disk is made again


def image_disk(image: Path, *, slim: bool = False) -> Path:
    """A cached ext4 copy of a SystemImager image tree, rebuilt when the tree's stamp is newer.

    slim: prepared for Xen guests (slim_tree), for tests that copy and boot the image many times.
    """
    image = Path(image)
    stamp = image / ".si-xen-test-image"
    key = repr((SLIM_VERSION, SLIM_FILTER, SLIM_FSTYPES, _slim_version())).encode()
    variant = "-slim-" + hashlib.sha256(key).hexdigest()[:8] if slim else ""
    dest = CACHE / "disks" / f"{image.name}{variant}.ext4"
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time (runs are processes of their own)
        if dest.exists() and (not stamp.exists() or dest.stat().st_mtime >= stamp.stat().st_mtime):
            return dest
        for stale in [*dest.parent.glob(f"{dest.stem}.tmp*"), *dest.parent.glob(f"{dest.stem}.tree*")]:
            subprocess.run(["rm", "-rf", "--one-file-system", str(stale)], check=False)  # a build killed outright
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        tree = dest.with_suffix(f".tree{os.getpid()}")
        try:
            src = image
            if slim:
                slim_tree(image, tree)
                src = tree
            ext4_image(src, tmp, label=image.name[:16])
            tmp.rename(dest)
        finally:
            tmp.unlink(missing_ok=True)
            shutil.rmtree(tree, ignore_errors=True)
    return dest


def package(src: Path, dest: Path) -> Path:
    """si-xen's Debian package built from the work tree's tracked files (the build never
    writes into the checkout): dom0 installs it as an admin would, with dpkg."""
    try:
        return debpkg.build_deb(src, dest, source=False)
    except debpkg.BuildError as e:
        raise TestbedError(f"the si-xen package did not build: {e}") from None
