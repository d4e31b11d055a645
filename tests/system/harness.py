"""Running scenario scripts in the testbed and collecting what they report.

A testbed boot runs many scenarios; each is reported as its own test. Every scenario runs in
dom0 under a time limit of its own (its base budget times the run's calibration, see
payload/lib.sh), so one hung guest fails its own scenario and the run goes on to the next.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TEST_IMAGE, need_tools, require
from tests.system import testbed
from tests.system.background import TIMINGS, Context, Once

REPO = Path(__file__).resolve().parents[2]


def record(what: str, seconds: float) -> None:
    TIMINGS.append((what, seconds))


@dataclass
class Run:
    res: testbed.Result
    log: str
    ok: dict[str, bool] = field(default_factory=dict)  # scenario -> passed every check
    reached: set[str] = field(default_factory=set)  # VMs whose login prompt appeared
    calibration: str = ""

    def section(self, name: str) -> str:
        """What scenario `name` printed (its diagnosis included), or why there is nothing."""
        start = self.log.find(f"=== scenario {name} ")
        if start < 0:
            return self.unfinished(name)
        end = self.log.find(f"SCENARIO {name} ", start)
        if end < 0:  # what it printed is the tail already
            return self.log[start:][-6000:] + "\n" + self.unfinished(name, tail=False)
        eol = self.log.find("\n", end)
        return self.log[start:eol if eol >= 0 else None][-6000:]

    def require_login(self, scenario: str, vm: str) -> None:
        """Fail the calling test unless `vm` showed its login prompt, with what `scenario` printed."""
        if vm not in self.reached:
            pytest.fail(f"{vm} never showed its login prompt:\n{self.section(scenario)}")

    def require_ok(self, scenario: str) -> None:
        """Fail the calling test unless every check of `scenario` passed."""
        if not self.ok.get(scenario):
            pytest.fail(f"scenario {scenario} failed:\n{self.section(scenario)}")

    def unfinished(self, name: str, tail: bool = True) -> str:
        why = (f"the testbed was stopped at its deadline ({self.res.deadline:.0f} s)" if self.res.timed_out
               else f"the testbed ended (script exit {self.res.rc}, QEMU exit {self.res.qemu_rc})")
        text = f"scenario {name} did not finish: {why}. {self.calibration}"
        return text + (f"\nlast lines:\n{self.res.tail(40)}" if tail else "")


@dataclass
class Prerequisites:
    dom0: Path  # the cached dom0 build
    image_disk: Path  # the test image, slimmed for Xen guests, as an ext4 disk
    payload: Path  # si-xen's Debian package from this work tree, and the dom0-side scripts
    image: Path  # the test image as the image store holds it (debootstrap's, MODULES=most)
    cloud: Path  # that image with Debian's cloud-init installed (issue 30's golden image)


def _prerequisites(work: Path, say) -> Prerequisites:
    require(os.geteuid() == 0, "the system tier needs root")
    need_tools("qemu-system-x86_64", "debootstrap", "mkfs.ext4")
    t = time.monotonic()
    dom0 = testbed.dom0(rebuild_log=say)  # a rebuild says why, and how long it took
    record("dom0 build (0 = cached)", time.monotonic() - t)
    t = time.monotonic()
    image = Path(os.environ.get("SI_XEN_TEST_IMAGE", TEST_IMAGE))
    out = subprocess.run([str(REPO / "tests/images/mkimage-debian12"), str(image)], capture_output=True, text=True)
    if out.returncode != 0:
        raise testbed.TestbedError(f"test image build failed:\n{out.stderr[-2000:]}")
    disk = testbed.image_disk(image, slim=True)
    record("test image + its disk", time.monotonic() - t)
    t = time.monotonic()
    cloud = image.with_name(image.name + "-cloud")
    out = subprocess.run([str(REPO / "tests/images/mkimage-cloud"), str(image), str(cloud)], capture_output=True, text=True)
    if out.returncode != 0:
        raise testbed.TestbedError(f"cloud-init test image build failed:\n{out.stderr[-2000:]}")
    record("cloud-init test image", time.monotonic() - t)
    return Prerequisites(dom0, disk, payload(work / "payload"), image, cloud)


# Shared by the session's runs: the first to ask builds them, the others wait.
PREREQUISITES = Once(_prerequisites)


def prerequisites(ctx: Context) -> Prerequisites:
    return PREREQUISITES(ctx.work.parent / "prerequisites", ctx.console)


def run_scenarios(ctx: Context, payload: Path, body: str, *, xen: bool, disks: list[testbed.Disk],
                  timeout: float = 900, mem: int = 3072, nic: str = "none", cpus: int = 2, priority: int = 0) -> Run:
    """Boot once, run `body` (lib.sh and scenarios.sh sourced) in dom0; collect what it reports.

    `timeout` bounds the boot up to dom0's calibration, which then sets the run's deadline."""
    script = f". ./lib.sh\n. ./scenarios.sh\n{body}\n"
    res = testbed.boot(payload, script, xen=xen, timeout=timeout, mem=mem, outdir=ctx.work / "out", disks=disks,
                       on_console=ctx.console, nic=nic, cpus=cpus, cancel=ctx.cancel,
                       priority=priority)
    run = Run(res, res.log())
    parse(run, "xen" if xen else "linux")
    return run


def parse(run: Run, kind: str) -> None:
    """Fill `run` from the lines its script printed; record the timings under `kind`."""
    if "dom0_up" in run.res.timings:
        record(f"{kind}: QEMU start -> dom0 runner", run.res.timings["dom0_up"])
    record(f"{kind}: whole QEMU run", run.res.timings["qemu"])
    for line in run.log.splitlines():
        parts = line.split()
        if line.startswith("CALIBRATION "):
            run.calibration = line
            record(f"{kind}: calibration factor {line.rsplit('=', 1)[-1]}", 0.0)
        elif len(parts) == 3 and parts[0] == "REACHED":
            run.reached.add(parts[1])
        elif len(parts) == 4 and parts[0] == "SCENARIO" and _seconds(parts[3]) is not None:
            run.ok[parts[1]] = parts[2] == "ok"
            record(f"{kind}: scenario {parts[1]} ({parts[2]})", _seconds(parts[3]))
        else:
            record_timing(line, kind)


def _seconds(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # garbled on the serial line


def record_timing(line: str, kind: str) -> None:
    """Record a `TIMING name seconds` line (lib.sh's, or the host script's) under `kind`."""
    parts = line.split()
    if len(parts) == 3 and parts[0] == "TIMING" and _seconds(parts[2]) is not None:
        record(f"{kind}: {parts[1]}", _seconds(parts[2]))


def payload(dest: Path, append: dict[str, str] | None = None) -> Path:
    """A payload directory: si-xen's Debian package built from this work tree, and the dom0-side scripts
    (`append`: text added to some of them, by file name)."""
    testbed.package(REPO, dest)
    for f in (Path(__file__).parent / "payload").iterdir():
        (dest / f.name).write_text(f.read_text() + (append or {}).get(f.name, ""))
    return dest


def scenario_lines(scenarios: dict[str, tuple[int, str]]) -> tuple[list[str], int]:
    """`scenario NAME BASE CALL` lines for dom0 (name -> base budget, call), and their sum."""
    return [f"scenario {name} {base} {call}" for name, (base, call) in scenarios.items()], sum(
        base for base, _ in scenarios.values())


def scenario_script(setup: list[str], scenarios: dict[str, tuple[int, str]], calibrate: str = "calibrate") -> str:
    """dom0's script: the set-up lines, the calibration (told the scenarios' budgets), the scenarios."""
    lines, total = scenario_lines(scenarios)
    return "\n".join([*setup, f"{calibrate} {total} {len(lines)}", *lines])


# VMs made on the host at native speed, in a private mount namespace whose /srv looks like
# dom0's: the disk "vms" at /srv/xen (disks, configs, si-xen state), the image read-only at
# /srv/images/NAME, other image trees bind-mounted beside it. Nothing of it is visible outside;
# the namespace's end takes the mounts (and their autoclear loop devices) with it, however the
# script ends. What si_mkxenvm prints for a VM (its summary: SSH fingerprints) is kept in
# /srv/xen/log/NAME.out, where dom0 reads it.
HOST_SCRIPT = r"""set -euo pipefail
mount -t tmpfs si-testbed /srv
mkdir -p /srv/xen /srv/images/"$IMAGE" /srv/si-test
mount -o loop "$VMS" /srv/xen
mount -o ro,loop "$IMAGE_DISK" /srv/images/"$IMAGE"
for pair in $TREES; do
  mkdir -p "/srv/images/${pair%%=*}"
  mount --bind -o ro "${pair#*=}" "/srv/images/${pair%%=*}"
done
# Writable copies of the image on the VMs' disk, which dom0 changes as si_getimage would. A
# symlink, not a bind mount: link(2) and reflinks never cross mount points, and the cache of
# image views (hard links of the image) is on that disk too.
for name in $COPIES; do
  mkdir -p /srv/xen/images/"$name"
  cp -a /srv/images/"$IMAGE"/. /srv/xen/images/"$name"/
  ln -s /srv/xen/images/"$name" /srv/images/"$name"
done
mkdir -p /srv/si-test/rsync_stubs  # a capture's stub: never the host's /etc/systemimager
printf 'DEFAULT_IMAGE_DIR = /srv/images\nDEFAULT_OVERRIDE_DIR = /srv/overrides\nRSYNC_STUB_DIR = /srv/si-test/rsync_stubs\n' \
  > /srv/si-test/systemimager.conf
mkdir -p /srv/xen/etc /srv/xen/log
printf '[defaults]\noutput = /srv/xen/etc\n[paths]\nstate_dir = /srv/xen/state\nlog_dir = /srv/xen/log\ncache_dir = /srv/xen/cache\n' \
  > /srv/xen/si-xen.conf
export SIS_CONFDIR=/srv/si-test SI_XEN_CONFIG=/srv/xen/si-xen.conf
# Lines "vm NAME IMAGE ARGS": si_mkxenvm; "capture IMAGE VM": si_getxenimage VM IMAGE (for
# physical machines, V2P); "vmdk IMAGE VM": the VM's root disk as a VMware disk (qemu-img), then
# si_getxenimage --from-disk (V2V). An image captured here is in /srv/images (tmpfs) for the VMs after.
while read -r verb name image args; do
  t=$(date +%s%N)
  case $verb in
    vm) # shellcheck disable=SC2086
        cmd=("$MKXENVM" "$image" --hostname "$name" --memory 512M --size 2G --swap 128M --yes $args);;
    capture) cmd=("$GETXENIMAGE" "$image" "$name");;
    vmdk) qemu-img convert -O vmdk "/srv/xen/domains/$image/disk.img" "/srv/si-test/$image.vmdk"
          cmd=("$GETXENIMAGE" --from-disk "/srv/si-test/$image.vmdk" "$name");;
  esac
  if ! "${cmd[@]}" </dev/null >/srv/xen/log/"$name".out 2>&1; then
    tail -n 20 /srv/xen/log/"$name".out; exit 1
  fi
  ms=$(( ($(date +%s%N) - t) / 1000000 ))
  printf 'TIMING host_%s_%s %d.%03d\n' "$verb" "$name" $((ms / 1000)) $((ms % 1000))
done
umount -R /srv
"""


def make_host_vms(image_disk: Path, image: str, vms: dict[str, str], dest: Path,
                  trees: dict[str, Path] | None = None, copies: tuple[str, ...] = ()) -> Path:
    """An XFS disk holding the VMs `vms` (name -> si_mkxenvm arguments, made from `image`, or from
    one of `trees` (image name -> a tree) or `copies` (image names: writable copies of `image` on
    that disk, under images/NAME) when the arguments begin with `@NAME`), made by si_mkxenvm here.
    An entry "capture VM" or "vmdk VM" is no VM but an image of that name: si_getxenimage of VM
    (made before it), or of VM's root disk converted to a VMware disk (--from-disk); a VM after it
    may be made from it ("@NAME")."""
    with open(dest, "wb") as f:
        f.truncate(12 << 30)
    subprocess.run(["mkfs.xfs", "-q", "-f", "-L", "si-vms", str(dest)], check=True)
    # the work tree's si_mkxenvm: beside this Python (tests/run), else in the checkout's .venv
    where = f"{Path(sys.executable).parent}:{REPO / '.venv/bin'}"
    mkxenvm, getxenimage = shutil.which("si_mkxenvm", path=where), shutil.which("si_getxenimage", path=where)
    if not (mkxenvm and getxenimage):
        raise testbed.TestbedError("si_mkxenvm or si_getxenimage not found (run tests/setup-host)")
    env = dict(os.environ, VMS=str(dest), IMAGE=image, IMAGE_DISK=str(image_disk), MKXENVM=mkxenvm, GETXENIMAGE=getxenimage,
               TREES=" ".join(f"{n}={p}" for n, p in (trees or {}).items()), COPIES=" ".join(copies))
    specs = ""
    for name, args in vms.items():
        if args.startswith(("capture ", "vmdk ")):
            specs += f"{args.split()[0]} {name} {args.split()[1]}\n"
            continue
        src, _, rest = args.partition(" ") if args.startswith("@") else ("@" + image, "", args)
        specs += f"vm {name} {src[1:]} {rest}\n"
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", HOST_SCRIPT],
                         input=specs, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise testbed.TestbedError(f"si_mkxenvm on the host failed:\n{out.stdout[-2000:]}{out.stderr[-3000:]}")
    for line in out.stdout.splitlines():
        record_timing(line, "host")
    return dest
