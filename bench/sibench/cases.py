"""The measured cases. Each run is timed up to the target filesystem being synced; its disk
cost is the statvfs used-blocks delta of that filesystem; helpers around it are untimed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field

from .images import kernel_files
from .proc import Sample, log_tail, run, timed
from .storage import release_leaks, settled_used, used_bytes

MIRROR = "http://deb.debian.org/debian"


@dataclass
class Ctx:
    mk: str
    rm: str
    env: dict
    conf: str
    cfgdir: str
    log: str
    runs: int
    xfs: str
    ext4: str
    image: str
    big: str = ""
    vmlogs: str = ""  # si_mkxenvm's log_dir: one log per VM, with its step times


@dataclass
class Case:
    key: str
    label: str
    root: str  # the target filesystem's mount point
    vms: int = 1
    tool: str = "si_mkxenvm"
    samples: list[Sample] = field(default_factory=list)
    error: str = ""
    note: str = ""


def measure(ctx: Ctx, case: Case, attempt: Callable[[int], Sample], after: Callable[[int], None],
            runs: int | None = None) -> Case:
    """runs x (attempt timed, disk delta, untimed cleanup); stops at the first failure."""
    print(f"  {case.label} ...", flush=True)
    for i in range(ctx.runs if runs is None else runs):
        try:
            before = settled_used(case.root)
            s = attempt(i)
            s.used_bytes = used_bytes(case.root) - before
            case.samples.append(s)
            after(i)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            case.error = f"{e}"
            break
        if s.rc:
            case.error = f"exit {s.rc}: {log_tail(ctx.log)}"
            break
    return case


# -- si_mkxenvm ---------------------------------------------------------------------------

def mk_argv(ctx: Ctx, host: str, root: str, image: str = "debian12", size: str = "2G", extra=()) -> list[str]:
    return [ctx.mk, image, "--hostname", host, "--memory", "512M", "--size", size, "--swap", "128M",
            "--dhcp", "--dir", root, "--output", ctx.cfgdir, "--config", ctx.conf, *extra]


def mk(ctx: Ctx, host: str, root: str, **kw) -> Sample:
    s = timed([mk_argv(ctx, host, root, **kw)], root, ctx.log, ctx.env)
    s.phases = phases(os.path.join(ctx.vmlogs, f"{host}.log"))
    return s


STEP = re.compile(r"^\d\d:\d\d:\d\d (?:([A-Z].*)|  \((\d+\.\d+) s\))$")


def phases(vmlog: str) -> dict[str, float]:
    """Step times from the last run in si_mkxenvm's log ('HH:MM:SS Title...' then '  (x.xx s)')."""
    try:
        with open(vmlog, errors="replace") as f:
            text = f.read().rsplit("==== ", 1)[-1]
    except OSError:
        return {}
    out, title = {}, ""
    for line in text.splitlines():
        m = STEP.match(line)
        if m and m.group(1):
            title = m.group(1).split(":")[0].split(" /")[0].strip()  # no per-VM paths
        elif m and title:
            out[title] = out.get(title, 0.0) + float(m.group(2))
    return out


def rmvm(ctx: Ctx, hosts: list[str], prune: bool = False) -> None:
    run([ctx.rm, *hosts, "--yes", "--config", ctx.conf, *(["--prune-bases"] if prune else [])], ctx.log, ctx.env)


def drop_bases(root: str) -> None:
    shutil.rmtree(os.path.join(root, "bases"), ignore_errors=True)


def first_full(ctx: Ctx, root: str, fs: str) -> Case:
    case = Case(f"first-full-{fs}", f"si_mkxenvm first deploy, --full-copy ({fs})", root)
    return measure(ctx, case, lambda i: mk(ctx, f"sibf{fs}{i}", root, extra=["--full-copy"]),
                   lambda i: rmvm(ctx, [f"sibf{fs}{i}"]))


def first_clone(ctx: Ctx) -> Case:
    drop_bases(ctx.xfs)
    case = Case("first-clone-xfs", "si_mkxenvm first deploy: base build + first clone (xfs)", ctx.xfs)

    def after(i: int) -> None:
        rmvm(ctx, [f"sibc{i}"], prune=True)
        drop_bases(ctx.xfs)
    return measure(ctx, case, lambda i: mk(ctx, f"sibc{i}", ctx.xfs), after)


def further(ctx: Ctx, image: str = "debian12", size: str = "2G", tag: str = "") -> list[Case]:
    """The seed VM builds the base (timed once, shown as its own row); then clones."""
    seed = Case(f"seed{tag}-xfs", f"  (seed: base build + clone{', ' + image if tag else ''})", ctx.xfs)
    measure(ctx, seed, lambda i: mk(ctx, f"sibs{tag}", ctx.xfs, image=image, size=size), lambda i: None, runs=1)
    label = f"si_mkxenvm further deploy (clone{', ' + image + ' ' + size if tag else ''}; xfs)"
    case = Case(f"further{tag}-xfs", label, ctx.xfs)
    if not seed.error:
        measure(ctx, case, lambda i: mk(ctx, f"sibn{tag}{i}", ctx.xfs, image=image, size=size),
                lambda i: rmvm(ctx, [f"sibn{tag}{i}"]))
    return [seed, case]


def batch(ctx: Ctx, with_base: bool) -> Case:
    hosts = [f"sibb{n:02d}" for n in range(1, 21)]
    what = "base build included" if with_base else "base already built"
    case = Case(f"batch20{'-base' if with_base else ''}-xfs", f"si_mkxenvm 20-VM batch, {what} (xfs)",
                ctx.xfs, vms=20)

    def after(i: int) -> None:
        rmvm(ctx, hosts, prune=with_base)
        if with_base:
            drop_bases(ctx.xfs)
    return measure(ctx, case, lambda i: mk(ctx, "sibb[01-20]", ctx.xfs), after)


# -- baselines ---------------------------------------------------------------------------

def bare_copy(ctx: Ctx, root: str, fs: str) -> Case:
    case = Case(f"bare-copy-{fs}", f"bare copy: sparse file, mkfs.ext4, loop mount, cp -a, umount ({fs})",
                root, tool="coreutils")
    mnt = os.path.join(os.path.dirname(ctx.log), "bare-mnt")
    os.makedirs(mnt, exist_ok=True)

    def attempt(i: int) -> Sample:
        disk = os.path.join(root, f"bare{i}.img")
        return timed([["truncate", "-s", "2G", disk], ["mkfs.ext4", "-q", "-F", disk],
                      ["mount", "-o", "loop", disk, mnt], ["cp", "-a", f"{ctx.image}/.", f"{mnt}/"],
                      ["umount", mnt]], root, ctx.log)

    def after(i: int) -> None:
        if os.path.ismount(mnt):
            subprocess.run(["umount", mnt], check=False)
        os.unlink(os.path.join(root, f"bare{i}.img"))
    return measure(ctx, case, attempt, after)


def article_extras(image: str) -> tuple[list[str], list[str]]:
    """What xen-create-image needs beyond the article's line on this machine, and why."""
    extras, why = [], []
    if not os.path.exists(f"/boot/vmlinuz-{os.uname().release}"):
        kernel, initrd = kernel_files(image)
        extras += [f"--kernel={kernel}", f"--initrd={initrd}"]
        why.append("xen-tools.conf names /boot/vmlinuz-`uname -r`, absent here: the image's kernel/initrd named")
    guess = subprocess.run(["xt-guess-suite-and-mirror", "--suite"], capture_output=True, text=True)
    if guess.returncode or not guess.stdout.strip():
        extras += ["--dist=bookworm", f"--mirror={MIRROR}"]
        why.append("xt-guess-suite-and-mirror cannot read deb822 sources: --dist/--mirror given")
    return extras, why


def article(ctx: Ctx) -> Case:
    case = Case("article", "article: xen-create-image --install-method=copy (stock hooks; xfs)",
                ctx.xfs, tool="xen-create-image")
    extras, why = article_extras(ctx.image)
    case.note = "; ".join(why)

    def argv(host: str) -> list[str]:
        return ["xen-create-image", "--memory", "256M", "--size=2Gb", "--swap=128Mb", "--dhcp",
                f"--dir={ctx.xfs}", f"--hostname={host}", "--install-method=copy",
                f"--install-source={ctx.image}", f"--output={ctx.cfgdir}", "--noboot", *extras]

    def after(i: int) -> None:
        host = f"sibx{i}"
        release_leaks(os.path.join(ctx.xfs, "domains"))  # a failed run leaves its disk mounted
        shutil.rmtree(os.path.join(ctx.xfs, "domains", host), ignore_errors=True)
        for p in (os.path.join(ctx.cfgdir, f"{host}.cfg"), f"/var/log/xen-tools/{host}.log"):
            if os.path.exists(p):
                os.unlink(p)
    env = {**os.environ, "LC_ALL": "C"}
    return measure(ctx, case, lambda i: timed([argv(f"sibx{i}")], ctx.xfs, ctx.log, env), after)
