"""A Request + the image (its metadata and walk) -> one validated Plan per VM; then the boot check.

Nothing is changed, but where clones are possible is tried: a probe file is reflinked in
--dir (not in a dry run), and the boot facts measured are kept per image (remember_boot)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace

from . import atomic, boot, initramfs_slim
from .errors import Fatal
from .image import Image
from .image.survey import Survey, needed_mib
from .plan import FILESYSTEMS, Disk, Plan, number_disks, stable_mac
from .request import Request
from .sizes import human
from .storage import backend_for
from .storage.files import existing_parent
from .storage.mount import MKFS
from .storage.reflink import reflinks_likely, reflinks_work
from .validate import check_network

ROOT_OPTIONS = {"ext3": "errors=remount-ro", "ext4": "errors=remount-ro", "xfs": "defaults"}


def _disk_name(mountpoint: str) -> str:
    return "disk" if mountpoint == "/" else mountpoint.strip("/").replace("/", "-")


def _image_layout(image: Image, req: Request, warn) -> list[Disk]:
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
        efs = e.fs if e.fs in FILESYSTEMS else req.fs
        if efs != e.fs:
            warn(f"{e.mountpoint}: {e.fs} cannot be made here, using {efs}")
        size = req.size if e.mountpoint == "/" and req.size_given else (e.size_mib or 0)
        disks.append(Disk(_disk_name(e.mountpoint), e.mountpoint, efs, size, e.options))
    swaps = [e for e in entries if e.mountpoint == "swap"]
    if swaps and not req.noswap:
        disks.append(Disk("swap", "", "swap", swaps[0].size_mib or req.swap, "sw"))
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


def make_plan(req: Request, image: Image, survey: Survey, index: int = 0, warn=lambda m: None) -> Plan:
    """The ``index``-th VM of ``req`` from ``image`` as ``survey`` walked it, validated."""
    hostname, ips, mac = req.for_host(index)
    storage = req.storage
    if storage.kind == "given":  # disks someone else made, numbered and placed (Ganeti)
        disks, clone, note = storage.disks, False, "onto the instance's disks"
    else:
        disks = tuple(number_disks(_sized(_layout(req, image, warn), image, survey)))
        clone, note = _clones(req)
    net = check_network(req.dhcp, ips, req.netmask, req.gateway, req.broadcast, req.nameservers,
                        mac or stable_mac(hostname), req.bridge, req.said.net)
    plan = Plan(
        hostname=hostname, image_name=image.name, image_path=image.path, os=image.os, memory=req.memory,
        vcpus=req.vcpus, type=req.type, boot=req.boot, disks=disks, storage=storage.kind,
        storage_root=storage.root, net=net, cfg_path=os.path.join(req.output, hostname + req.extension) if
        storage.kind != "given" else "", maxmem=req.maxmem, kernel=req.kernel, initrd=req.initrd,
        activation=req.activation, force=req.force,
        layout=req.layout, layout_from=image.layout_from, thin_pool=storage.pool, clone=clone,
        fingerprint=survey.fingerprint if survey else "", excluded=survey.excluded if survey else (), notes=(note,),
        fixups_only=req.fixups_only, fixups_skip=req.fixups_skip, initramfs=req.initramfs,
    )
    if storage.kind == "given":
        return plan
    backend = backend_for(plan)
    return plan.with_disks(replace(d, target=backend.assign(hostname, d)) for d in plan.disks)


def _layout(req: Request, image: Image, warn) -> list[Disk]:
    if req.layout == "image":
        disks = _image_layout(image, req, warn)
    else:
        disks = [Disk("disk", "/", req.fs, req.size, ROOT_OPTIONS[req.fs])]
        if req.swap and not req.noswap:
            disks.append(Disk("swap", "", "swap", req.swap, "sw"))
    for d in disks:
        if d.fs not in MKFS:
            raise Fatal(f"filesystem {d.fs} is not supported", f"use one of {', '.join(FILESYSTEMS)}")
    return disks


def _clones(req: Request) -> tuple[bool, str]:
    """Whether the VM clones the image's base disk, and the plan's words for its copy."""
    s = req.storage
    if s.kind == "lvm":
        clone = bool(s.pool) and not s.full_copy
        return clone, f"thin snapshot of the image's base LV in {s.root}/{s.pool}" if clone else \
            "full copy into logical volumes"
    probe = reflinks_likely if req.dry_run else reflinks_work  # a dry run writes no probe file
    there = existing_parent(s.root)  # a missing --dir is made where its parent is
    if not s.full_copy and os.path.isdir(there) and probe(there):
        return True, f"copy-on-write clone of the image's base disk in {s.root}/bases"
    if s.full_copy:
        return False, "full copy (--full-copy)"
    return False, f"full copy ({s.root} cannot reflink; XFS or btrfs give clones)"


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
            k, need, slim_facts = cached
        else:
            slim_facts = {}
            with image.reading():
                k = boot.find_kernel(image.guest)
                if k is None:
                    raise Fatal(
                        f"image '{image.name}' has no kernel in /boot",
                        "supply a Xen-capable kernel with --kernel and --initrd",
                    )
                unpacked = 0
                if k.initrd and plan.initramfs != "image":  # one reading of the initramfs for both
                    r = initramfs_slim.slim_cached(image.guest.path(k.initrd), tuple(sorted(_root_fs(plan))))
                    slim_facts, unpacked = {_fs_key(_root_fs(plan)): asdict(r)}, r.unpacked_before
                need = boot.memory_needed(image.guest, k, image.name, unpacked)
    k = replace(k, memory_need=need)
    if not plan.kernel:
        with image.reading():
            k = boot.choose_initramfs(image.guest, k, need, plan.initramfs, _root_fs(plan),
                                      known=_slim_known(slim_facts.get(_fs_key(_root_fs(plan)))))
        need = k.memory_need
    if plan.memory < need:
        raise Fatal(
            f"{memory_option[0]} {plan.memory}M is too small for this guest: its kernel and initramfs need {need} MiB to boot",
            memory_option[1].format(need),
        )
    if plan.boot == "pvgrub2" and not os.path.isfile(boot.PVGRUB2[plan.type]):
        raise Fatal(f"pvgrub2 image {boot.PVGRUB2[plan.type]} not found", "apt-get install grub-xen-host, or use --boot direct")
    return k


def noted(plans: list[Plan], kernel: boot.GuestKernel | None) -> list[Plan]:
    """The plans with the initramfs check_boot chose, as the admin reads it."""
    return [replace(p, initramfs_note=kernel.note) for p in plans] if kernel and kernel.note else plans


def _cache_file(cache_dir: str | None, plan: Plan) -> str | None:
    return os.path.join(cache_dir, f"{plan.image_name}-{plan.fingerprint}.json") if cache_dir else None


def _cached(cache_dir, plan) -> tuple[boot.GuestKernel, int, dict] | None:
    """What check_boot measured for this image before (its kernel was proven then; its Xen-sized
    initramfs by root filesystems), or None: a file that is not what remember_boot wrote only
    costs a new measurement."""
    path = _cache_file(cache_dir, plan)
    try:
        with open(path) as f:
            d = json.load(f)
        k, need, slim = boot.GuestKernel(**d["kernel"]), d["memory_need"], d.get("slim") or {}
    except (TypeError, OSError, ValueError, KeyError, AttributeError):
        return None
    ok = isinstance(need, int) and 0 < need < 2**20 and isinstance(k.kernel, str) and isinstance(slim, dict)
    return (k, need, slim) if ok else None


def _root_fs(plan: Plan) -> set[str]:
    return boot.root_fstypes(plan.disks)


def _fs_key(fstypes) -> str:
    return f"{','.join(sorted(fstypes))}:{initramfs_slim.params(fstypes)}"  # a new VERSION: made again


def _slim_known(d):
    """An earlier VM's initramfs_slim.Result from the boot facts, or None (then it is looked up)."""
    try:
        return initramfs_slim.Result.from_json(d)
    except (TypeError, KeyError):
        return None


def remember_boot(plan: Plan, kernel: boot.GuestKernel | None, cache_dir: str | None) -> None:
    """Keep what check_boot measured, now that a VM of this image exists."""
    path = _cache_file(cache_dir, plan)
    if kernel and path and not plan.kernel and not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        own = {f: getattr(kernel, f) for f in ("version", "kernel", "initrd")}  # the image's facts, not a VM's choice
        slim = {_fs_key(_root_fs(plan)): asdict(kernel.slim_result)} if kernel.slim_result is not None else {}
        atomic.write(path, json.dumps({"kernel": own, "memory_need": kernel.own_need or kernel.memory_need,
                                       "slim": slim}))
