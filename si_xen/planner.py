"""CLI options + xen.conf + image metadata -> a validated Plan. Touches nothing."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace

from . import atomic, boot
from .config import BUILTIN
from .errors import Fatal
from .image import Image
from .image.survey import Survey, needed_mib
from .plan import (
    BOOT_MODES,
    FILESYSTEMS,
    TYPES,
    Disk,
    Plan,
    number_disks,
    stable_mac,
)
from .sizes import human, parse_mib
from .storage import backend_for
from .storage.bases import reflinks_likely, reflinks_work
from .storage.files import existing_parent
from .storage.mount import MKFS
from .validate import check_hostname, check_network

ROOT_OPTIONS = {"ext3": "errors=remount-ro", "ext4": "errors=remount-ro", "xfs": "defaults"}


def _choice(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise Fatal(f"invalid {what} '{value}'", f"use one of: {', '.join(allowed)}")
    return value


def _disk_name(mountpoint: str) -> str:
    return "disk" if mountpoint == "/" else mountpoint.strip("/").replace("/", "-")


def _image_layout(image: Image, o: dict, fs: str, size_given: bool, warn) -> list[Disk]:
    entries = image.meta.filesystems
    if not entries:
        raise Fatal(
            f"image '{image.name}' has no disk layout (etc/systemimager/autoinstallscript.conf or disks-layout.xml)",
            "use --layout default",
        )
    disks = []
    for e in entries:
        if e.mountpoint == "swap":
            continue
        if not e.mountpoint.startswith("/") or e.mountpoint.startswith("/boot/efi"):
            warn(f"golden client filesystem {e.mountpoint} ({e.fs}) is not needed under Xen; skipped")
            continue
        efs = e.fs if e.fs in FILESYSTEMS else fs
        if efs != e.fs:
            warn(f"{e.mountpoint}: {e.fs} cannot be made here, using {efs}")
        size = parse_mib(o["size"], "--size") if e.mountpoint == "/" and size_given else (e.size_mib or 0)
        disks.append(Disk(_disk_name(e.mountpoint), e.mountpoint, efs, size, e.options))
    swaps = [e for e in entries if e.mountpoint == "swap"]
    if swaps and not o.get("noswap"):
        disks.append(Disk("swap", "", "swap", swaps[0].size_mib or parse_mib(o["swap"], "--swap"), "sw"))
    if not any(d.mountpoint == "/" for d in disks):
        raise Fatal(f"the disk layout of image '{image.name}' has no / filesystem", "use --layout default")
    return disks


def _sized(disks: list[Disk], image: Image, survey: Survey) -> list[Disk]:
    """Give layout disks without a size their need plus headroom; refuse ones too small."""
    usage = survey.usage([d.mountpoint for d in disks if d.mountpoint])
    out = []
    for d in disks:
        if d.mountpoint:
            need = needed_mib(*usage[d.mountpoint])
            if d.size_mib == 0:
                d = Disk(d.name, d.mountpoint, d.fs, max(256, need * 3 // 2 // 64 * 64 + 64), d.options)
            elif d.size_mib < need:
                what = "--size" if d.mountpoint == "/" else f"the {d.mountpoint} filesystem"
                raise Fatal(
                    f"{what} of {human(d.size_mib)} is too small: image '{image.name}' needs {need} MiB for {d.mountpoint}",
                    f"use --size {human(-(-need // 256) * 256)} or more" if d.mountpoint == "/" else "use --layout default",
                )
        out.append(d)
    return out


def make_plan(o: dict, image: Image, survey: Survey, warn=lambda m: None) -> Plan:
    """``o``: option name -> value (CLI over config over built-in defaults)."""
    hostname = check_hostname(o["hostname"] or "")
    memory = parse_mib(o["memory"], "--memory")
    maxmem = parse_mib(o["maxmem"], "--maxmem") if o.get("maxmem") else None
    if memory < 64:
        raise Fatal(f"--memory {memory}M is too small", "give a Xen guest at least 64M")
    if maxmem is not None and maxmem < memory:
        raise Fatal(f"--maxmem {maxmem}M is less than --memory {memory}M", "make --maxmem at least --memory")
    try:
        vcpus = int(o["vcpus"])
    except ValueError:
        vcpus = 0
    if not 1 <= vcpus <= 128:
        raise Fatal(f"invalid --vcpus '{o['vcpus']}'", "give a whole number from 1 to 128")
    fs = _choice(o["fs"], FILESYSTEMS, "--fs")
    vtype = _choice(o["type"], TYPES, "--type")
    bmode = _choice(o["boot"], BOOT_MODES, "--boot")
    if vtype == "pvh" and bmode == "pygrub":
        raise Fatal("pygrub cannot boot a PVH guest here", "use --boot direct or --boot pvgrub2 with --type pvh")
    layout = _choice(o["layout"], ("default", "image"), "--layout")

    if layout == "image":
        disks = _image_layout(image, o, fs, o.get("size_given", False), warn)
    else:
        disks = [Disk("disk", "/", fs, parse_mib(o["size"], "--size"), ROOT_OPTIONS[fs])]
        swap = 0 if o.get("noswap") else parse_mib(o["swap"], "--swap") if o["swap"] not in ("0", "") else 0
        if swap:
            disks.append(Disk("swap", "", "swap", swap, "sw"))
    for d in disks:
        if d.fs not in MKFS:
            raise Fatal(f"filesystem {d.fs} is not supported", f"use one of {', '.join(FILESYSTEMS)}")
    disks = number_disks(_sized(disks, image, survey))

    net = check_network(
        bool(o.get("dhcp")), tuple(o.get("ip") or ()), o.get("netmask") or "", o.get("gateway") or "",
        o.get("broadcast") or "", o.get("nameserver") or "", o.get("mac") or stable_mac(hostname),
        o.get("bridge") or BUILTIN["bridge"],
    )

    if o.get("dir") and o.get("lvm"):
        raise Fatal("both --dir and --lvm given", "choose one place for the disks")
    if not o.get("dir") and not o.get("lvm"):
        raise Fatal("no storage given", "add --dir DIR (image files) or --lvm VG (logical volumes)")
    storage, root = ("lvm", o["lvm"]) if o.get("lvm") else ("dir", os.path.abspath(o["dir"]))
    pool = o.get("thin_pool") or None
    if pool and storage != "lvm":
        raise Fatal("--thin-pool given without --lvm", "name the volume group with --lvm VG")
    if storage == "lvm":
        clone = bool(pool) and not o.get("full_copy")
    else:
        probe = reflinks_likely if o.get("dry_run") else reflinks_work
        there = existing_parent(root)  # a missing --dir is made where its parent is
        clone = not o.get("full_copy") and os.path.isdir(there) and probe(there)
    if storage == "lvm" and clone:
        copy_note = f"thin snapshot of the image's base LV in {root}/{pool}"
    elif storage == "lvm":
        copy_note = "full copy into logical volumes"
    elif clone:
        copy_note = f"copy-on-write clone of the image's base disk in {root}/bases"
    elif o.get("full_copy"):
        copy_note = "full copy (--full-copy)"
    else:
        copy_note = f"full copy ({root} cannot reflink; XFS or btrfs give clones)"

    output = o["output"]
    if not os.path.isdir(output):
        raise Fatal(f"config directory {output} does not exist", "install the Xen tools or give --output DIR")
    cfg_path = os.path.join(output, hostname + o["extension"])

    boot.check_supplied(o.get("kernel"), o.get("initrd"))
    plan = Plan(
        hostname=hostname, image_name=image.name, image_path=image.path, os=image.os, memory=memory,
        vcpus=vcpus, type=vtype, boot=bmode, disks=tuple(disks), storage=storage, storage_root=root, net=net,
        cfg_path=cfg_path, maxmem=maxmem, kernel=o.get("kernel"), initrd=o.get("initrd"),
        toolstack=o["toolstack"], start=bool(o.get("start") or o.get("console")), console=bool(o.get("console")),
        autostart=bool(o.get("autostart")), force=bool(o.get("force")), layout=layout,
        layout_from=image.layout_from,
        thin_pool=pool, clone=clone, fingerprint=survey.fingerprint, excluded=survey.excluded,
        notes=(copy_note,),
        fixups_only=tuple(x for x in (o.get("fixups") or "").split(",") if x),
        fixups_skip=tuple(x for x in (o.get("skip_fixups") or "").split(",") if x),
    )
    backend = backend_for(plan)
    plan = plan.with_disks(d.__class__(**{**d.__dict__, "target": backend.assign(hostname, d)}) for d in plan.disks)
    return plan


def check_boot(plan: Plan, image: Image, cache_dir: str | None = None,
               memory_option: tuple[str, str] = ("--memory", "use --memory {}M or more")) -> boot.GuestKernel | None:
    """The kernel the VM boots, and whether the memory given lets it get past its initramfs.
    ``memory_option`` names the memory setting in the caller's terms (its name, the fix).

    Measuring an initramfs means unpacking it (~0.5 s): the result is kept per image
    fingerprint in ``cache_dir`` (by remember_boot, once a VM is made), so later VMs skip it."""
    if plan.kernel:
        k = boot.GuestKernel("supplied", plan.kernel, plan.initrd)
        need = boot.memory_needed(boot.Guest("/"), k)  # the files given with --kernel/--initrd
    else:
        cached = _cached(cache_dir, plan)
        if cached:
            k, need = cached
        else:
            with image.reading():
                k = boot.find_kernel(image.guest)
                if k is None:
                    raise Fatal(
                        f"image '{image.name}' has no kernel in /boot",
                        "supply a Xen-capable kernel with --kernel and --initrd",
                    )
                need = boot.memory_needed(image.guest, k, image.name)
    k = replace(k, memory_need=need)
    if plan.memory < need:
        raise Fatal(
            f"{memory_option[0]} {plan.memory}M is too small for this guest: its kernel and initramfs need {need} MiB to boot",
            memory_option[1].format(need),
        )
    if plan.boot == "pvgrub2" and not os.path.isfile(boot.PVGRUB2[plan.type]):
        raise Fatal(f"pvgrub2 image {boot.PVGRUB2[plan.type]} not found", "apt-get install grub-xen-host, or use --boot direct")
    return k


def _cache_file(cache_dir: str | None, plan: Plan) -> str | None:
    return os.path.join(cache_dir, f"{plan.image_name}-{plan.fingerprint}.json") if cache_dir else None


def _cached(cache_dir, plan) -> tuple[boot.GuestKernel, int] | None:
    """What check_boot measured for this image before (its kernel was proven then), or None:
    a file that is not what remember_boot wrote only costs a new measurement."""
    path = _cache_file(cache_dir, plan)
    try:
        with open(path) as f:
            d = json.load(f)
        k, need = boot.GuestKernel(**d["kernel"]), d["memory_need"]
    except (TypeError, OSError, ValueError, KeyError, AttributeError):
        return None
    return (k, need) if isinstance(need, int) and 0 < need < 2**20 and isinstance(k.kernel, str) else None


def remember_boot(plan: Plan, kernel: boot.GuestKernel | None, cache_dir: str | None) -> None:
    """Keep what check_boot measured, now that a VM of this image exists."""
    path = _cache_file(cache_dir, plan)
    if kernel and path and not plan.kernel and not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        atomic.write(path, json.dumps({"kernel": asdict(kernel), "memory_need": kernel.memory_need}))
