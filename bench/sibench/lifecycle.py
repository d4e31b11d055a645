"""bench/lifecycle: a VM following its image (issue 28), in interleaved rounds on the same image.

Rows: the first deploy with --full-copy (the reference the targets are ratios of), a further
VM (clone), si_updatexenvm of a stopped VM after 1 % of the image's files changed (XFS: copy on
write; ext4: in place), si_lsxenvm --drift of a stopped VM, si_mkxenvm --rebuild of a clone. The image is a hard-link copy of
debian12 (`lifecycle`) whose next generation is made between rounds, untimed, by replacing
1 % of its regular files (new content, new mtime; never written through the hard links).
Issue 29's rows: si_getxenimage --keep-xen of the stopped VM lcx, the same V2P (reversed), and the floor, rsync -aHAXS
--numeric-ids of the same tree (lcx's disk mounted read-only) into an empty directory beside the
images (the done-when: capture <= 1.3 x the floor).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from . import cases as C
from . import images
from .main import REPO, ensure_venv, private_config
from .proc import stop_children, timed
from .storage import make_scratch, remove_workdir

NAME = "lifecycle"
SHARE = 0.01  # of the image's regular files changed per generation


def image_copy(src: str) -> str:
    dest = os.path.join(images.IMAGES, NAME)
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["cp", "-al", src, dest], check=True)
    return dest


def candidates(root: str) -> list[str]:
    """Regular files under usr/share (docs, locales, data: no binary a fixup reads), sorted."""
    out = []
    for d, dirs, files in os.walk(os.path.join(root, "usr/share")):
        dirs.sort()
        out += [os.path.join(d, f) for f in sorted(files) if os.path.isfile(os.path.join(d, f))
                and not os.path.islink(os.path.join(d, f))]
    return out


def next_generation(root: str, files: list[str], r: int) -> None:
    """Each file replaced by a new one (rename: the hard-linked original stays as it was)."""
    for p in files:
        with open(p, "rb") as f:
            data = f.read()
        tmp = f"{p}.bench-tmp"
        with open(tmp, "wb") as f:
            f.write(data[:max(0, len(data) - 8)] + f"gen{r:05d}".encode())
        st = os.stat(p)
        os.chown(tmp, st.st_uid, st.st_gid)
        os.chmod(tmp, st.st_mode & 0o7777)
        os.replace(tmp, p)


@contextlib.contextmanager
def scratch_dirs():
    """A work dir in /var/tmp with its bench.log and an XFS scratch disk, removed however it is left."""
    workdir = tempfile.mkdtemp(prefix="si-xen-bench.", dir="/var/tmp")
    try:
        log = os.path.join(workdir, "bench.log")
        yield workdir, log, make_scratch(workdir, "xfs", "64G", log)
    finally:
        stop_children()
        remove_workdir(workdir)


def run(args) -> dict:
    mk, rm = ensure_venv()
    up, ls = os.path.join(os.path.dirname(mk), "si_updatexenvm"), os.path.join(os.path.dirname(mk), "si_lsxenvm")
    gx = os.path.join(os.path.dirname(mk), "si_getxenimage")
    if not (os.access(up, os.X_OK) and os.access(gx, os.X_OK)):  # a venv made before these commands existed
        subprocess.run([os.path.join(REPO, ".venv/bin/pip"), "install", "-q", "--no-deps", "-e", REPO], check=True)
    src = images.ensure_debian12(REPO)
    image = image_copy(src)
    results: dict[str, list[float]] = {}
    try:
        with scratch_dirs() as (workdir, log, xfs):
            ext4 = make_scratch(workdir, "ext4", "16G", log)
            conf, env = private_config(workdir)
            cfgdir = os.path.join(workdir, "cfg")
            os.makedirs(cfgdir)
            ctx = C.Ctx(mk, rm, env, conf, cfgdir, log, args.rounds, xfs, ext4, image, "", os.path.join(workdir, "log"))
            files = candidates(image)
            total = sum(len(fs) for _, _, fs in os.walk(image))  # every non-directory entry of the image
            want = max(1, int(total * SHARE))
            changed = files[:: max(1, len(files) // want)][:want]
            print(f"Image {image}: {total} files; {len(changed)} of them (under usr/share) changed per generation. "
                  f"{args.rounds} rounds.", flush=True)
            images.warm(image)
            for host, root in (("lcx", xfs), ("lce", ext4), ("lcr", xfs)):  # the VMs that follow the image, untimed
                s = C.mk(ctx, host, root, image=NAME, extra=["--full-copy"] if root == ext4 else [])
                if s.rc:
                    raise RuntimeError(f"making {host} failed (see {log})")
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", flush=True)
                next_generation(image, changed, r)  # untimed: the image's next generation, and its base
                C.mk(ctx, f"lcs{r}", xfs, image=NAME)
                C.rmvm(ctx, [f"lcs{r}"])
                row = {}
                row["first deploy, --full-copy (xfs)"] = C.mk(ctx, f"lcf{r}", xfs, image=NAME, extra=["--full-copy"])
                C.rmvm(ctx, [f"lcf{r}"])
                row["further deploy (clone; xfs)"] = C.mk(ctx, f"lcn{r}", xfs, image=NAME)
                C.rmvm(ctx, [f"lcn{r}"])
                for host, root, what in (("lcx", xfs, "xfs, copy on write"), ("lce", ext4, "ext4, in place")):
                    row[f"update, 1 % changed ({what})"] = timed([[up, host, "--config", conf]], root, log, env)
                row["drift (stopped VM)"] = timed([[ls, "--drift", "lcx", "--config", conf]], xfs, log, env)
                row["rebuild (clone; xfs)"] = timed([[mk, "--rebuild", "lcr", "--config", conf]], xfs, log, env)
                row[CAPTURE] = timed([[gx, "lcx", f"lccap{r}", "--keep-xen", "--config", conf]], images.IMAGES, log, env)
                shutil.rmtree(os.path.join(images.IMAGES, f"lccap{r}"), ignore_errors=True)
                row[V2P] = timed([[gx, "lcx", f"lcv2p{r}", "--config", conf]], images.IMAGES, log, env)
                shutil.rmtree(os.path.join(images.IMAGES, f"lcv2p{r}"), ignore_errors=True)
                row[FLOOR] = copy_floor(f"{xfs}/domains/lcx/disk.img", workdir, r, log)
                for case, s in row.items():
                    if s.rc:
                        raise RuntimeError(f"{case} failed: exit {s.rc} (see {log})")
                    results.setdefault(case, []).append(s.seconds)
                    print(f"  {case:<40} {s.seconds:7.2f} s", flush=True)
            C.rmvm(ctx, ["lcx", "lce", "lcr"], prune=True)
    finally:
        shutil.rmtree(image, ignore_errors=True)
    return results


CAPTURE, FLOOR = "capture --keep-xen (stopped VM)", "copy floor: rsync -aHAXS same tree"
V2P = "capture, V2P (the fixups reversed)"


def copy_floor(disk: str, workdir: str, r: int, log: str):
    """rsync -aHAXS --numeric-ids of the VM's tree (its disk mounted read-only, untimed) into an
    empty directory on the images' filesystem: what a capture cannot beat."""
    src, dest = os.path.join(workdir, f"floor-src{r}"), os.path.join(images.IMAGES, f"lcfloor{r}")
    os.makedirs(src)
    os.makedirs(dest)
    subprocess.run(["mount", "-o", "ro,loop,noload", disk, src], check=True)
    try:
        return timed([["rsync", "-aHAXS", "--numeric-ids", f"{src}/", f"{dest}/"]], images.IMAGES, log)
    finally:
        subprocess.run(["umount", src], check=True)
        os.rmdir(src)
        shutil.rmtree(dest, ignore_errors=True)


def table(results: dict) -> str:
    ref = statistics.median(results["first deploy, --full-copy (xfs)"])
    further = statistics.median(results["further deploy (clone; xfs)"])
    lines = [f"{'case':<40} {'median s':>9} {'min-max s':>14} {'x first full':>12} {'x further':>10}"]
    for case, xs in results.items():
        m = statistics.median(xs)
        lines.append(f"{case:<40} {m:9.2f} {min(xs):6.2f}-{max(xs):<7.2f} {m / ref:12.3f} {m / further:10.2f}")
    if results.get(CAPTURE) and results.get(FLOOR):
        ratio = statistics.median(results[CAPTURE]) / statistics.median(results[FLOOR])
        lines.append(f"capture / copy floor: {ratio:.2f} (issue 29's target: <= 1.3)")
    if results.get(V2P) and results.get(FLOOR):
        ratio = statistics.median(results[V2P]) / statistics.median(results[FLOOR])
        lines.append(f"V2P capture / copy floor: {ratio:.2f}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/lifecycle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("FATAL: bench/lifecycle needs root (loop devices, mounts): try sudo bench/lifecycle", file=sys.stderr)
        return 1
    results = run(args)
    print("\n" + table(results))
    return 0
