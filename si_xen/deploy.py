"""The orchestrator: storage -> populate -> fixups -> boot -> domain config -> toolstack.

Everything made is registered for undo; a failure or a signal at any step removes it all.
"""

from __future__ import annotations

import os
import threading
import time

from . import __version__, boot, domain, hostkeys, initramfs, populate, registry, toolstack
from .errors import Fatal
from .guestfs import Guest
from .image import Image
from .plan import Plan
from .report import Reporter
from .rollback import Undo, critical, signals_raise
from .sizes import human
from .storage import backend_for
from .storage.mount import sync_targets


def boot_dir(plan: Plan, state_dir: str) -> str:
    """Where the guest's kernel goes: beside its disk files, or in our state dir for LVs."""
    if plan.storage == "dir":
        return os.path.join(plan.storage_root, "domains", plan.hostname)
    return os.path.join(state_dir, "boot", plan.hostname)


def preflight(plan: Plan, settings, need_mib: int) -> None:
    """Checks that must hold right before the first change (and again under the lock)."""
    backend = backend_for(plan)
    backend.validate(plan.hostname, list(plan.disks), need_mib, plan.force)
    if os.path.lexists(plan.cfg_path) and not plan.force:
        raise Fatal(f"config {plan.cfg_path} already exists", "remove the VM with si_rmxenvm or use --force")
    if registry.load(settings.paths["state_dir"], plan.hostname) and not plan.force:
        raise Fatal(f"VM '{plan.hostname}' already exists (si_lsxenvm lists it)", "remove it with si_rmxenvm or use --force")
    if plan.start:
        ts = toolstack.require_running(plan.toolstack)
        if plan.hostname in ts.domains():
            raise Fatal(f"domain '{plan.hostname}' is running", f"stop it first: {ts.name} shutdown {plan.hostname}")


def fingerprints(guest: Guest) -> list[str]:
    out = []
    for pub in guest.glob("/etc/ssh", "ssh_host_*_key.pub"):
        try:
            out.append(hostkeys.fingerprint(guest.read_text(pub) or ""))
        except (IndexError, ValueError):
            pass  # not a key: nothing to show
    return out


def execute(plan: Plan, image: Image, kernel: boot.GuestKernel, settings, rep: Reporter, keys=None) -> dict:
    """Make the VM. ``keys``: a hostkeys.Prefetch started earlier, or None."""
    backend = backend_for(plan)
    undo, cleanup = Undo(), Undo()
    try:
        with signals_raise():
            return _run(plan, image, kernel, settings, rep, backend, undo, cleanup, keys)
    except BaseException as e:
        rep.end_progress()
        e.leftovers = cleanup.pop_all() + undo.pop_all()
        for what in e.leftovers:
            rep.warn(f"could not undo: {what}")
        raise


def _warm_initramfs(path: str) -> None:
    try:
        initramfs.scan_cached(path)
    except Exception:  # only a cache warmer: the kernel fixup reports what is wrong
        pass


def _run(plan, image, kernel, settings, rep, backend, undo, cleanup, keys) -> dict:
    t0 = time.monotonic()
    # The kernel fixup reads the initramfs (~0.7 s of decompression): do it now, while the
    # disks are written; the copy in the guest has the same identity, so the fixup hits the cache.
    warm = None
    if kernel and kernel.initrd and not plan.kernel:
        warm = threading.Thread(target=_warm_initramfs, args=(image.guest.path(kernel.initrd),), daemon=True)
        warm.start()
    bases: list[str] = []
    # A long copy is ahead when there is no base to clone: spare CPU for the key stock.
    stock = hostkeys.Stock(settings.paths["state_dir"])
    refill = stock.refill() if not (plan.clone and populate.bases_ready(plan, backend)) else []
    try:
        if plan.clone:
            root, bases = populate.cloned(plan, image, plan.fingerprint, backend, rep, undo, cleanup)
        else:
            root = populate.fresh(plan, image, backend, rep, undo, cleanup)
    finally:
        stock.settle(refill)
    from .fixups import run_all  # the fixup catalogue loads only when a deploy needs it
    from .fixups.spec import spec_from_plan

    if warm is not None:
        warm.join()

    with rep.step("Running hooks"):
        spec = spec_from_plan(plan, keys.ready() if keys is not None else None)
        run_all(root, spec, only=plan.fixups_only or None, skip=plan.fixups_skip or None, log=rep.detail)
    guest = Guest(root)
    kernel_path = ramdisk = None
    if plan.boot == "direct" and not plan.kernel:
        kernel_path, ramdisk = boot.copy_out(guest, kernel, boot_dir(plan, settings.paths["state_dir"]), undo,
                                             shared=bases[0] if bases and backend.kind == "file" else None)
    elif plan.boot == "direct":
        kernel_path, ramdisk = plan.kernel, plan.initrd
    else:
        separate_boot = any(d.mountpoint == "/boot" for d in plan.disks)
        boot.write_grub_cfg(guest, kernel, plan.root.vdev, separate_boot, f"{image.os.pretty} (si-xen)")
    fps = fingerprints(guest)
    with rep.step("Unmounting and syncing"):
        failed = cleanup.pop_all()
        if failed:
            raise Fatal(f"could not unmount the new filesystems: {failed[0]}", "check with findmnt, then si_rmxenvm")
        sync_targets(list(plan.disks))
    with rep.step(f"Creating Xen configuration file: {plan.cfg_path}"):
        text = domain.render(plan, kernel=kernel_path, ramdisk=ramdisk, cmdline=boot.cmdline(plan.root.vdev),
                             user_dir=settings.paths["template_dir"])
        existed = os.path.lexists(plan.cfg_path)
        with critical():
            domain.write_atomic(plan.cfg_path, text)
            if not existed:
                undo.push(f"remove {plan.cfg_path}", os.unlink, plan.cfg_path)
    auto_link = toolstack.link_autostart(plan.cfg_path, undo) if plan.autostart else None
    record = {
        "name": plan.hostname, "image": plan.image_name, "image_path": plan.image_path,
        "image_time": image.meta.retrieval_time, "guest": image.os.pretty, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "config": plan.cfg_path, "autostart": auto_link, "storage": plan.storage, "storage_root": plan.storage_root,
        "thin_pool": plan.thin_pool,
        "disks": [{"vdev": d.vdev, "mountpoint": d.mountpoint, "fs": d.fs, "size": human(d.size_mib), "target": d.target}
                  for d in plan.disks],
        "boot": plan.boot, "type": plan.type, "boot_files": [p for p in (kernel_path, ramdisk) if p and not plan.kernel],
        "mac": plan.net.mac, "ips": list(plan.net.ips) or ["dhcp"], "memory": plan.memory, "version": __version__,
        "ssh_fingerprints": fps, "bases": bases, "seconds": round(time.monotonic() - t0, 2),
    }
    with critical():
        registry.save(settings.paths["state_dir"], record)
        undo.push("remove VM record", registry.remove, settings.paths["state_dir"], plan.hostname)
    if plan.start:
        ts = toolstack.require_running(plan.toolstack)
        rep.say(f"Starting {plan.hostname} with {ts.name} create")
        ts.create(plan.cfg_path, console=plan.console)
    undo.forget()
    return record

