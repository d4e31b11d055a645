"""bench/run: set up scratch filesystems and a private si-xen config, run the cases, report."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from . import cases as C
from . import images, report
from .proc import forward, stop_children
from .storage import fs_type, make_scratch, remove_workdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEMORY_NOTE = ("si_mkxenvm runs use --memory 512M, not the article's 256M: this guest's initramfs "
               "needs 384M to unpack and si_mkxenvm refuses 256M")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    p.add_argument("--runs", type=int, default=None, help="runs per case (default 5)")
    p.add_argument("--quick", action="store_true", help="2 runs per case")
    p.add_argument("--json", default=os.path.join(REPO, "bench/results/latest.json"), help="JSON output file")
    a = p.parse_args(argv)
    a.runs = a.runs or (2 if a.quick else 5)
    return a


def ensure_venv(repo: str = REPO) -> tuple[str, str]:
    """The si_mkxenvm and si_rmxenvm of repo's .venv, made by its tests/setup-host if missing."""
    mk, rm = (os.path.join(repo, ".venv/bin", n) for n in ("si_mkxenvm", "si_rmxenvm"))
    if not os.access(mk, os.X_OK):
        subprocess.run([os.path.join(repo, "tests/setup-host")], check=True)
    # Measured as installed: byte-compiled (the work tree may have changed since set-up).
    subprocess.run([os.path.join(repo, ".venv/bin/python"), "-m", "compileall", "-q", os.path.join(repo, "si_xen")],
                   check=True, stdout=subprocess.DEVNULL)
    return mk, rm


def private_config(workdir: str) -> tuple[str, dict]:
    """SIS_CONFDIR pointing at the test images, and a --config whose [paths] stay in workdir."""
    confdir = os.path.join(workdir, "conf")
    os.makedirs(confdir)
    with open(os.path.join(confdir, "systemimager.conf"), "w") as f:
        # the stubs of images a capture writes (bench/lifecycle) stay in workdir, never in /etc/systemimager
        f.write(f"DEFAULT_IMAGE_DIR = {images.IMAGES}\nRSYNC_STUB_DIR = {confdir}/rsync_stubs\n")
    conf = os.path.join(confdir, "xen.conf")
    with open(conf, "w") as f:
        f.write("[paths]\n" + "".join(f"{k}_dir = {workdir}/{k}\n" for k in ("state", "log", "lock")))
    return conf, {**os.environ, "SIS_CONFDIR": confdir}


def _on_signal(sig, _frame):
    forward(sig)
    raise KeyboardInterrupt


def run_all(ctx: C.Ctx, out: list) -> None:
    steps = [(C.article, ()), (C.bare_copy, (ctx.xfs, "xfs")), (C.bare_copy, (ctx.ext4, "ext4")),
             (C.first_full, (ctx.xfs, "xfs")), (C.first_full, (ctx.ext4, "ext4")), (C.first_clone, ()),
             (C.further, ()), (C.batch, (False,)), (_drop_seed, ("",)), (C.batch, (True,)),
             (_big, ()), (_drop_seed, ("big",))]
    for fn, args in steps:
        try:
            res = fn(ctx, *args)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            res = C.Case(fn.__name__, f"{fn.__name__}: setup failed", ctx.xfs, error=str(e))
        out += res if isinstance(res, list) else [res] if res else []


def _drop_seed(ctx: C.Ctx, tag: str) -> None:
    C.rmvm(ctx, [f"sibs{tag}"], prune=True)
    C.drop_bases(ctx.xfs)


def _big(ctx: C.Ctx) -> list:
    print("  (reading debian12-big once to warm the page cache)", flush=True)
    images.warm(ctx.big)
    return C.further(ctx, image="debian12-big", size="6G", tag="big")


def bench(args, workdir: str, out: list) -> dict:
    mk, rm = ensure_venv()
    image = images.ensure_debian12(REPO)
    big = images.ensure_big(image)
    log = os.path.join(workdir, "bench.log")
    conf, env = private_config(workdir)
    cfgdir = os.path.join(workdir, "cfg")
    os.makedirs(cfgdir)
    xfs, ext4 = make_scratch(workdir, "xfs", "64G", log), make_scratch(workdir, "ext4", "16G", log)
    ctx = C.Ctx(mk, rm, env, conf, cfgdir, log, args.runs, xfs, ext4, image, big, os.path.join(workdir, "log"))
    info = _image_info(image, big)
    print(f"Image {image}: {info['image_mb']} MB allocated, {info['image_entries']} entries; "
          f"big image {info['big_mb']} MB. {args.runs} runs per case.", flush=True)
    images.warm(image)
    run_all(ctx, out)
    return {"images": info, "disk": f"{fs_type(xfs)} (reflink=1) and {fs_type(ext4)} on loop-mounted sparse "
            f"files in {fs_type(workdir)} /var/tmp (scratch made and removed by the benchmark)"}


def _image_info(image: str, big: str) -> dict:
    size, entries = images.tree_bytes(image)
    big_size, _ = images.tree_bytes(big)
    return {"image": image, "image_bytes": size, "image_mb": size >> 20, "image_entries": entries,
            "big": big, "big_bytes": big_size, "big_mb": big_size >> 20}


def finish(args, meta: dict, out: list, interrupted: bool) -> None:
    m = report.machine(meta.get("disk", "?"))
    checks = report.targets(out, meta.get("images", {}).get("image_bytes", 1))
    print("\n" + report.machine_text(m))
    print(MEMORY_NOTE + "; every time includes syncing the target filesystem; peak MB is the largest "
          "process of the command's tree (wait4 ru_maxrss)\n")
    print(report.table(out))
    print("\nsi_mkxenvm step times (median s, from its log; the rest is start-up, planning, summary):")
    print(report.phases_text(out))
    print("\nIssue 5 targets:\n" + report.targets_text(checks))
    report.write_json(args.json, {"machine": m, "runs": args.runs, "interrupted": interrupted,
                                  "memory_note": MEMORY_NOTE, **meta, "targets": checks}, out)
    print(f"\nJSON: {args.json}")


def main(argv: list[str]) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("FATAL: bench/run needs root (loop devices, mounts): try sudo bench/run", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    workdir = tempfile.mkdtemp(prefix="si-xen-bench.", dir="/var/tmp")
    out, meta, interrupted = [], {}, False
    try:
        meta = bench(args, workdir, out)
    except KeyboardInterrupt:
        interrupted = True
        print("\nInterrupted: cleaning up", file=sys.stderr)
    finally:
        _cleanup(workdir, args.json)
    finish(args, meta, out, interrupted)
    return 130 if interrupted else 0


def _cleanup(workdir: str, json_path: str) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    stop_children()
    log = os.path.join(workdir, "bench.log")
    if os.path.exists(log):
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        shutil.copy(log, os.path.join(os.path.dirname(os.path.abspath(json_path)), "last-run.log"))
    remove_workdir(workdir)
    for n in range(10):
        p = f"/var/log/xen-tools/sibx{n}.log"
        if os.path.exists(p):
            os.unlink(p)
