#!/usr/bin/env python3
"""si-xen benchmark: the slim initramfs (issue 31) of the Debian 12 test image's own, or of the
files given: sizes, the memory the guest needs with each (boot.memory_needed's rule), and the time
to slim, median of N runs, beside the floor of reading it once (initramfs.scan: the decompression
alone). The image's initramfs is also measured recompressed as zstd (Debian's COMPRESS=zstd) and
xz, and at other levels. With --deploy N: what it costs the first VM's planning (si_mkxenvm
--dry-run of the image, empty caches, --initramfs image against the default), N interleaved rounds.
--compare CHECKOUT: another si-xen checkout's planning too, in the same rounds (A/B).
Usage: bench/initramfs_slim.py [--runs N] [--deploy N [--compare CHECKOUT]] [INITRD ...]"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # REPO

from si_xen import boot, initramfs, initramfs_slim  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = os.path.join(os.environ.get("SI_XEN_TEST_CACHE", "/var/cache/si-xen-tests"), "images/debian12")
MiB = 2**20


def memory(kernel_bytes: int, size: int, unpacked: int) -> int:
    """boot.memory_needed's rule, for a file outside a guest."""
    return boot.need_mib(kernel_bytes, size, unpacked)


def timed(fn, runs: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def row(label: str, src: str, kernel_bytes: int, runs: int, work: str) -> None:
    dst = os.path.join(work, "slim.img")
    floor, _ = timed(lambda: initramfs.scan(src), runs)
    took, r = timed(lambda: initramfs_slim.slim(src, dst), runs)
    if not r.slimmed:
        print(f"{label:<28} used as it is: {r.reason}")
        return
    print(f"{label:<28} {r.size_before / MiB:7.1f} {r.size_after / MiB:7.1f} {r.unpacked_before / MiB:8.1f} "
          f"{r.unpacked_after / MiB:8.1f} {memory(kernel_bytes, r.size_before, r.unpacked_before):5d} "
          f"{memory(kernel_bytes, r.size_after, r.unpacked_after):5d} {floor:7.2f} {took:7.2f}")


def planning(rounds: int, trees: list[str]) -> None:
    """si_mkxenvm --dry-run of the test image, twice per state (first: empty caches of its own, state
    and slim cache; then again, warm), ``--initramfs image`` (the memory check reads the image's own)
    against the default (the same reading makes the Xen-sized one), for each checkout in ``trees``
    (this one, and --compare's), in rounds whose order turns, so that a loaded machine weighs on all."""
    times: dict[tuple[str, str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="si-bench-plan.") as work:
        sis = os.path.join(work, "sis")
        os.makedirs(sis)
        with open(os.path.join(sis, "systemimager.conf"), "w") as f:
            f.write(f"DEFAULT_IMAGE_DIR = {os.path.dirname(IMAGE)}\n")
        runs = [(tree, mode) for tree in trees for mode in ("image", "auto")]
        for i in range(rounds):
            for n, (tree, mode) in enumerate(runs if i % 2 else runs[::-1]):
                run = os.path.join(work, f"{i}-{n}")
                conf = os.path.join(run, "xen.conf")
                os.makedirs(run)
                with open(conf, "w") as f:
                    f.write(f"[paths]\nstate_dir = {run}/state\nlog_dir = {run}/log\nlock_dir = {run}/lock\n")
                env = dict(os.environ, SIS_CONFDIR=sis, SI_XEN_CACHE=f"{run}/cache", PYTHONPATH=tree)
                argv = [sys.executable, "-m", "si_xen.cli.mkxenvm", "debian12", "--hostname", f"b{i}", "--memory",
                        "512M", "--size", "2G", "--dhcp", "--dir", f"{run}/vms", "--output", run, "--dry-run",
                        "--initramfs", mode, "--config", conf]
                for when in ("first", "further"):
                    t = time.perf_counter()
                    # cwd: not a checkout, so that PYTHONPATH alone says whose si_xen runs (-m puts cwd first)
                    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, cwd=work)
                    times.setdefault((tree, when, mode), []).append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for tree in trees:
        print(f"si_mkxenvm --dry-run of {tree}, median of {rounds} (each run):")
        for when in ("first", "further"):
            for mode in ("image", "auto"):
                print(f"  {when:>7} VM, --initramfs {mode:<5}: {med[tree, when, mode]:.3f} s "
                      f"({' '.join(f'{x:.3f}' for x in times[tree, when, mode])})")
            print(f"  {when:>7} VM: the slimming costs {med[tree, when, 'auto'] - med[tree, when, 'image']:+.3f} s")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/initramfs_slim.py", description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--deploy", type=int, default=0, metavar="N", help="also time N rounds of a first VM's planning")
    p.add_argument("--compare", metavar="CHECKOUT", help="with --deploy: another si-xen checkout's too (A/B)")
    p.add_argument("initrd", nargs="*")
    a = p.parse_args(argv)
    files = a.initrd or sorted(glob.glob(f"{IMAGE}/boot/initrd.img-*"))[-1:]
    if not files:
        print(f"no initramfs given and none in {IMAGE}/boot (tests/images/mkimage-debian12 builds it)")
        return 1
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, median of {a.runs}; levels written: "
          + " ".join(f"{k} {v}" for k, v in initramfs_slim.LEVEL.items()))
    print(f"{'initramfs':<28} {'MiB':>7} {'slim':>7} {'unpack':>8} {'slim':>8} {'mem':>5} {'slim':>5} "
          f"{'read s':>7} {'slim s':>7}")
    with tempfile.TemporaryDirectory(prefix="si-bench-slim.") as work:
        for src in files:
            kernel = src.replace("initrd.img-", "vmlinuz-")
            kbytes = os.path.getsize(kernel) if os.path.isfile(kernel) else 0
            row(os.path.basename(src), src, kbytes, a.runs, work)
            if a.initrd:
                continue
            raw = subprocess.run(["gzip", "-dc", src], check=True, stdout=subprocess.PIPE).stdout
            for kind, argv in (("zstd -1", ["zstd", "-q", "-1", "-T0", "-c"]), ("xz", ["xz", "--check=crc32", "-T0", "-c"])):
                other = os.path.join(work, "other.img")
                with open(other, "wb") as f:
                    f.write(subprocess.run(argv, input=raw, check=True, stdout=subprocess.PIPE).stdout)
                row(f"  as {kind}", other, kbytes, a.runs, work)
            for kind, levels in (("gzip", (6,)), ("zstd", (1, 9))):
                src2 = src if kind == "gzip" else os.path.join(work, "zstd.img")
                if kind == "zstd":
                    with open(src2, "wb") as f:
                        f.write(subprocess.run(["zstd", "-q", "-1", "-T0", "-c"], input=raw, check=True,
                                               stdout=subprocess.PIPE).stdout)
                for level in levels:
                    old, initramfs_slim.LEVEL[kind] = initramfs_slim.LEVEL[kind], level
                    try:
                        row(f"  {kind} written at -{level}", src2, kbytes, a.runs, work)
                    finally:
                        initramfs_slim.LEVEL[kind] = old
    print("mem: MiB the guest needs to boot (boot.memory_needed); read s: initramfs.scan, the decompression "
          "floor; slim s: initramfs_slim.slim (a further VM of the image: the cached file, ~1 ms)")
    if a.deploy:
        planning(a.deploy, [REPO] + ([os.path.abspath(a.compare)] if a.compare else []))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
