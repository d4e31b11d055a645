"""si_updatexenvm when the image's kernel changed: the new kernel and initramfs where Xen reads a
direct-boot VM's (copied out of the updated tree), the config's ramdisk line following, killed at
the boot and kernel steps and finished by the next run."""

from __future__ import annotations

import glob
import gzip
import os
import re
import time

import pytest

from tests.unit import fakeimage

from .harness import make_env, record, tiny_image
from .test_update import leftovers, made

pytestmark = pytest.mark.integration
NEW = "6.1.0-100-amd64"


def next_kernel(image: str, initramfs: bool = True) -> tuple[bytes, bytes | None]:
    """The image's kernel replaced by version NEW (with an initramfs or none); its bytes."""
    for old in glob.glob(f"{image}/boot/vmlinuz-*") + glob.glob(f"{image}/boot/initrd.img-*"):
        os.unlink(old)
    kernel, initrd = fakeimage.bzimage(), None
    with open(f"{image}/boot/vmlinuz-{NEW}", "wb") as f:
        f.write(kernel)
    if initramfs:
        initrd = gzip.compress(fakeimage.cpio({"init": b"#!/bin/sh\n", "next": b"generation 2\n"}), 1)
        with open(f"{image}/boot/initrd.img-{NEW}", "wb") as f:
            f.write(initrd)
    return kernel, initrd


def ramdisk_line(cfg: str) -> str | None:
    m = re.search(r'^ramdisk\s*=\s*"([^"]*)"', open(cfg).read(), re.M)
    return m[1] if m else None


def read(path: str) -> bytes | None:
    return open(path, "rb").read() if os.path.exists(path) else None


@pytest.mark.parametrize("where", ["xfs", "ext4"])
@pytest.mark.parametrize("initramfs", [True, False], ids=["initramfs", "none"])
def test_the_new_kernel_is_where_xen_reads_it(where, initramfs, xfs_dir, tmp_path):
    storage = xfs_dir if where == "xfs" else str(tmp_path / "vms")
    env, image, disk = made(tmp_path, storage)
    boot = f"{storage}/domains/u1"
    cfg = record(env, "u1")["config"]
    assert ramdisk_line(cfg) == f"{boot}/initrd.img"
    kernel, initrd = next_kernel(image, initramfs)
    env.run("updatexenvm", "u1", check=True)
    assert read(f"{boot}/vmlinuz") == kernel
    assert read(f"{boot}/initrd.img") == initrd, "the new initramfs, or none: never the old one with the new kernel"
    assert ramdisk_line(cfg) == (f"{boot}/initrd.img" if initramfs else None)
    assert re.search(r'^kernel\s*=\s*"' + re.escape(f"{boot}/vmlinuz") + '"', open(cfg).read(), re.M)
    assert leftovers(storage) == []
    if not initramfs:  # and back: a kernel with an initramfs again gets its ramdisk line again
        kernel, initrd = next_kernel(image, True)
        os.rename(f"{image}/boot/vmlinuz-{NEW}", f"{image}/boot/vmlinuz-{NEW}.1")  # a newer version
        os.rename(f"{image}/boot/initrd.img-{NEW}", f"{image}/boot/initrd.img-{NEW}.1")
        env.run("updatexenvm", "u1", check=True)
        assert read(f"{boot}/initrd.img") == initrd and ramdisk_line(cfg) == f"{boot}/initrd.img"


@pytest.mark.parametrize("where,step", [("xfs", "boot"), ("xfs", "kernel"), ("ext4", "boot"), ("ext4", "kernel")])
def test_killed_at_the_boot_steps_the_next_run_puts_the_kernel_in_place(where, step, xfs_dir, tmp_path, monkeypatch):
    storage = xfs_dir if where == "xfs" else str(tmp_path / "vms")
    env, image, disk = made(tmp_path, storage)
    kernel, initrd = next_kernel(image)
    monkeypatch.setenv("SI_XEN_KILL_AT", step)
    assert env.run("updatexenvm", "u1").returncode == -9
    monkeypatch.delenv("SI_XEN_KILL_AT")
    env.run("updatexenvm", "u1", check=True)
    boot = f"{storage}/domains/u1"
    assert read(f"{boot}/vmlinuz") == kernel and read(f"{boot}/initrd.img") == initrd
    assert leftovers(storage) == [], "no .upd copy of a kernel left"



def test_a_vm_that_boots_a_xen_sized_initramfs_gets_one_made_of_the_new(tmp_path, monkeypatch):
    """Made with the default --initramfs auto from an image whose initramfs carries every machine's
    drivers, the VM boots a Xen-sized one; when the image's initramfs changes, the update gives it
    a Xen-sized one of the new, never the image's whole one nor the old one; and it prunes the
    cache's old one, which no generation in use boots any more, once unused for a week."""
    from si_xen import initramfs, initramfs_prune
    from tests.unit.test_initramfs_choice import BIG, INITRD, most_like

    images = tmp_path / "images"
    image = tiny_image(images)
    most_like(image)
    env = make_env(tmp_path / "e", str(images))
    cache = tmp_path / "cache"
    monkeypatch.setenv("SI_XEN_CACHE", str(cache))
    storage = str(tmp_path / "vms")
    env.mk("tiny", "--hostname", "u1", "--memory", "512M", "--size", "512M", "--noswap", "--dhcp", "--dir", storage,
           "--output", env.output, check=True)
    boot = f"{storage}/domains/u1"
    assert record(env, "u1")["initramfs"] == "slim"
    big = {os.path.basename(m) for m in BIG}

    def names() -> set[str]:
        return {os.path.basename(n) for n in initramfs.scan(f"{boot}/initrd.img").names}

    assert "xen-blkfront.ko" in names() and not names() & big and "si-marker" not in names()
    first = {p.name for p in (cache / "initramfs").glob("*-slim-*.img")}
    assert len(first) == 1
    week = time.time() - (initramfs_prune.UNUSED_DAYS + 1) * 86400
    for p in (cache / "initramfs").iterdir():
        os.utime(p, (week, week))
    most_like(image, marker=b"generation 2\n")
    env.run("updatexenvm", "u1", check=True)
    assert {"xen-blkfront.ko", "si-marker"} <= names() and not names() & big
    now = {p.name for p in (cache / "initramfs").glob("*-slim-*.img")}
    assert len(now) == 1 and not now & first, (first, now)
    assert os.path.getsize(f"{boot}/initrd.img") * 2 < os.path.getsize(image + INITRD)
