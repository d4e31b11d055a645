"""bench/firstdeploy: the first deploy against the copy floor and the article's command,
on an image as debootstrap leaves it and on one as si_getimage leaves it, round by round.

Each round runs every case once on each image, in the same order, so a machine that gets
slower or faster during the run (these are shared) moves all cases alike; medians and
min-max over the rounds are reported, with ratios against the article's xen-create-image
and against the floor (mkfs.ext4 -d of the tree into a sparse file: the least any copy
into a fresh ext4 disk can cost). Every time ends with the target filesystem synced.
With --compare, A/B against another checkout instead (compare.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from . import cases as C
from . import images
from .main import REPO, ensure_venv, private_config
from .proc import spawn, stop_children, timed
from .report import machine, machine_text
from .storage import make_scratch, remove_workdir

# What a debootstrap'd tree carries in /run and /tmp before si_getimage's excludes (bookworm's
# debootstrap leaves the lock dir, mount's utab and systemd's state; apt and dpkg leave logs).
RAW_EXTRA = {"run/lock/.keep": "", "run/mount/utab": "", "run/systemd/container": "debootstrap\n",
             "run/systemd/seats/.keep": "", "tmp/debootstrap.log": "I: Base system installed successfully.\n" * 200}


def raw_image(src: str) -> str:
    """debian12 as debootstrap left it: a hard-link copy with /run and /tmp content put back."""
    dest = os.path.join(images.IMAGES, "debian12-raw")
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["cp", "-al", src, dest], check=True)
    for rel, text in RAW_EXTRA.items():
        os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(dest, rel), "w") as f:
            f.write(text)
    return dest


# The key stock topped up by the deploying tree's own code (so an A/B run compares like with like),
# at normal priority: a deploy's own refill can leave it short (its ssh-keygen runs at SCHED_IDLE, one
# at a time, and stops with the deploy, which claims a key too): 0-2 of 4 keys here beside other tests.
FILL = """import os, subprocess, sys
from si_xen import hostkeys as h
s = h.Stock(sys.argv[1])
os.makedirs(s.dir, mode=0o700, exist_ok=True)
for t in h.STOCK_TYPES:
    have = sum(n.startswith(t + "-") and not n.endswith(".pub") for n in os.listdir(s.dir))
    for _ in range(h.STOCK_SIZE - have):
        p = os.path.join(s.dir, ".bench-" + os.urandom(6).hex())
        subprocess.run(["ssh-keygen", "-q", "-t", t, "-N", "", "-C", h.tag(""), "-f", p], check=True)
        s.put(t, p)
"""


def fill_stock(ctx: C.Ctx, state: str) -> None:
    python = os.path.join(os.path.dirname(ctx.mk), "python")  # -I: si_xen from its venv, not from the cwd
    rc, _, _ = spawn([python, "-I", "-c", FILL, state], ctx.log, ctx.env)
    if rc:
        print(f"  (the key stock could not be topped up, see {ctx.log}: the warm cases may make RSA keys)", flush=True)


def warm_up(ctx: C.Ctx, name: str) -> None:
    """An untimed deploy and removal: the tree's Python and modules into the page cache."""
    C.mk(ctx, "fdwarm", ctx.xfs, image=name, extra=["--full-copy"])
    C.rmvm(ctx, ["fdwarm"])


def cases(ctx: C.Ctx, image: str, name: str) -> dict:
    """case -> (attempt(round) -> Sample, cleanup(round)): the two baselines, then si_cases."""
    extras, _ = C.article_extras(image)

    def article(r):
        return timed([["xen-create-image", "--memory", "256M", "--size=2Gb", "--swap=128Mb", "--dhcp",
                       f"--dir={ctx.xfs}", f"--hostname=fdx{r}", "--install-method=copy", f"--install-source={image}",
                       f"--output={ctx.cfgdir}", "--noboot", *extras]], ctx.xfs, ctx.log, {**os.environ, "LC_ALL": "C"})

    def article_done(r):
        shutil.rmtree(os.path.join(ctx.xfs, "domains", f"fdx{r}"), ignore_errors=True)
        for p in (os.path.join(ctx.cfgdir, f"fdx{r}.cfg"), f"/var/log/xen-tools/fdx{r}.log"):
            if os.path.exists(p):
                os.unlink(p)

    def floor(r):
        disk = os.path.join(ctx.xfs, f"floor{r}.img")
        return timed([["truncate", "-s", "2G", disk], ["mkfs.ext4", "-q", "-F", "-d", image, disk]], ctx.xfs, ctx.log)

    def floor_done(r):
        os.unlink(os.path.join(ctx.xfs, f"floor{r}.img"))

    return {"article": (article, article_done), "floor": (floor, floor_done), **si_cases(ctx, name)}


def si_cases(ctx: C.Ctx, name: str, scan_cache: str = "") -> dict:
    """si_mkxenvm's cases, leaving no VM and no base behind. scan_cache: a private SI_XEN_CACHE
    that the cold case empties too (else the host's initramfs scan cache stays warm)."""
    state = os.path.join(os.path.dirname(ctx.vmlogs), "state")  # private_config's [paths]

    def cold(r):  # the side work has all to do: no key stock, no measured boot facts
        for d in (os.path.join(state, "hostkeys"), os.path.join(state, "images"), scan_cache):
            if d:
                shutil.rmtree(d, ignore_errors=True)
        return C.mk(ctx, f"fdc{r}", ctx.xfs, image=name)

    def first(r):  # key stock full and boot facts known: the copy alone on the critical path
        return C.mk(ctx, f"fdf{r}", ctx.xfs, image=name)

    def further(r):
        return C.mk(ctx, f"fdn{r}", ctx.xfs, image=name)

    def vm_done(host, prune):
        def done(r):
            C.rmvm(ctx, [f"{host}{r}"], prune=prune)
            if prune:
                C.drop_bases(ctx.xfs)
        return done

    def stock(r):  # untimed
        fill_stock(ctx, state)

    def further_done(r):
        vm_done("fdn", False)(r)
        vm_done("fdf", True)(r)  # and the first VM, with the base it built

    return {"first, side work cold": (cold, vm_done("fdc", True)), "(key stock)": (stock, lambda r: None),
            "first": (first, lambda r: None), "further": (further, further_done)}


@contextlib.contextmanager
def scratch():
    """A fresh work dir in /var/tmp with its bench.log, an XFS scratch disk and the two images
    (page cache warmed); all removed on the way out, however it is left."""
    src = images.ensure_debian12(REPO)
    workdir = tempfile.mkdtemp(prefix="si-xen-bench.", dir="/var/tmp")
    try:
        log = os.path.join(workdir, "bench.log")
        xfs = make_scratch(workdir, "xfs", "64G", log)
        imgs = {"as debootstrap left it": raw_image(src), "as si_getimage leaves it": src}
        for path in imgs.values():
            images.warm(path)
        yield workdir, log, xfs, imgs
    finally:
        stop_children()
        shutil.rmtree(os.path.join(images.IMAGES, "debian12-raw"), ignore_errors=True)
        remove_workdir(workdir)


def play(cs: dict, r: int, label: str, log: str, tag: str = "") -> dict:
    """Round r of the cases cs in order: {case: Sample} of the timed ones."""
    out = {}
    for case, (attempt, done) in cs.items():
        s = attempt(r)
        if s is not None:
            if s.rc:
                raise RuntimeError(f"{tag}{case} on the image {label} failed: exit {s.rc} (see {log})")
            out[case] = s
            print(f"  {tag}{label:<26} {case:<24} {s.seconds:7.2f} s", flush=True)
        done(r)
    return out


def run(args) -> dict:
    mk, rm = ensure_venv()
    results: dict = {}
    with scratch() as (workdir, log, xfs, imgs):
        conf, env = private_config(workdir)
        cfgdir = os.path.join(workdir, "cfg")
        os.makedirs(cfgdir)
        src = imgs["as si_getimage leaves it"]
        ctx = C.Ctx(mk, rm, env, conf, cfgdir, log, args.rounds, xfs, "", src, "", os.path.join(workdir, "log"))
        plan = {label: cases(ctx, path, os.path.basename(path)) for label, path in imgs.items()}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}", flush=True)
            for label, cs in plan.items():
                for case, s in play(cs, r, label, log).items():
                    results.setdefault(label, {}).setdefault(case, []).append(round(s.seconds, 3))
    return results


def table(results: dict) -> str:
    lines = [f"{'image':<26} {'case':<24} {'median s':>9} {'min-max s':>14} {'x article':>10} {'x floor':>8}"]
    for label, cs in results.items():
        art, flo = statistics.median(cs["article"]), statistics.median(cs["floor"])
        for case, xs in cs.items():
            m = statistics.median(xs)
            lines.append(f"{label:<26} {case:<24} {m:9.2f} {min(xs):6.2f}-{max(xs):<7.2f} {m / art:10.3f} {m / flo:8.2f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/firstdeploy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--compare", metavar="OTHER_CHECKOUT",
                   help="A/B: this tree's si_mkxenvm cases against those of another si-xen checkout")
    p.add_argument("--json", help="default bench/results/firstdeploy.json (firstdeploy-compare.json with --compare)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("FATAL: bench/firstdeploy needs root (loop devices, mounts): try sudo bench/firstdeploy", file=sys.stderr)
        return 1
    if args.compare:
        from .compare import main as compare  # here: compare imports this module
        return compare(args)
    args.json = args.json or os.path.join(REPO, "bench/results/firstdeploy.json")
    results = run(args)
    m = machine("xfs (reflink=1) on a loop-mounted sparse file in /var/tmp")
    print("\n" + machine_text(m) + "\n\n" + table(results))
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"machine": m, "rounds": args.rounds, "seconds": results}, f, indent=1)
    print(f"\nJSON: {args.json}")
    return 0
