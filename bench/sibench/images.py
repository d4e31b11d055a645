"""The Debian 12 test image (built by tests/images/mkimage-debian12) and a larger copy of it."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

IMAGES = "/var/cache/si-xen-tests/images"
BIG_STAMP = ".si-xen-bench-big"
CHUNK = 8 << 20


def ensure_debian12(repo: str) -> str:
    """Build the image once (the script is idempotent and prints its path)."""
    dest = os.path.join(IMAGES, "debian12")
    builder = os.path.join(repo, "tests/images/mkimage-debian12")
    subprocess.run([builder, dest], check=True, stdout=subprocess.DEVNULL, timeout=3600)
    return dest


def ensure_big(src: str, extra_mib: int = 2560, files: int = 10) -> str:
    """debian12 plus extra_mib of incompressible data under /opt/bigdata; built only when absent."""
    dest = os.path.join(IMAGES, "debian12-big")
    if os.path.exists(os.path.join(dest, BIG_STAMP)):
        return dest
    print(f"Building {dest} (debian12 + {extra_mib} MiB of random data, once) ...", flush=True)
    tmp = f"{dest}.tmp.{os.getpid()}"
    try:
        subprocess.run(["cp", "-a", "--reflink=auto", f"{src}/.", f"{tmp}/"], check=True)
        _random_files(os.path.join(tmp, "opt/bigdata"), extra_mib, files)
        open(os.path.join(tmp, BIG_STAMP), "w").close()
        shutil.rmtree(dest, ignore_errors=True)  # an incomplete earlier attempt
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _random_files(directory: str, mib: int, files: int) -> None:
    os.makedirs(directory, exist_ok=True)
    per_file = (mib << 20) // files
    for i in range(files):
        with open(os.path.join(directory, f"data{i:02d}.bin"), "wb") as f:
            for _ in range(per_file // CHUNK):
                f.write(os.urandom(CHUNK))


def tree_bytes(root: str) -> tuple[int, int]:
    """Allocated bytes (hard links counted once, like du) and entries of an image tree."""
    seen, total, entries = set(), 0, 0
    for d, dirs, names in os.walk(root):
        for n in dirs + names:
            st = os.lstat(os.path.join(d, n))
            entries += 1
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total, entries


def warm(root: str) -> None:
    """Read every file once, so each timed run starts from the same (warm) page cache."""
    for d, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as f:
                    while f.read(CHUNK):
                        pass


def kernel_files(root: str) -> tuple[str, str]:
    kernels = sorted(glob.glob(os.path.join(root, "boot/vmlinuz-*")))
    initrds = sorted(glob.glob(os.path.join(root, "boot/initrd.img-*")))
    return (kernels[-1] if kernels else "", initrds[-1] if initrds else "")
