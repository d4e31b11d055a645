"""The deploy: typed steps run in order, each journaling what it makes before making it.

    bases → disks → filesystems → mount → copy → fixups → boot → unmount → config
          → autostart → confirm → record → start

A step that fails or is interrupted (SIGINT, SIGTERM, SIGHUP) has every thing made so far
deleted, newest first (journal.py); a crash leaves the journal for si_rmxenvm. Once the
domain exists (``xl create`` returned 0) nothing is undone: the VM is complete and runs.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import (
    __version__,
    atomic,
    bases,
    boot,
    domain,
    hostkeys,
    journal,
    populate,
    proc,
    sshdconfig,
    toolstack,
)
from .errors import Fatal
from .guestfs import Guest
from .image import Image, survey
from .image.survey import ImageChanged
from .made import Domain, File
from .plan import Plan, describe
from .report import Reporter
from .rollback import Guard, signals_raise
from .sizes import human
from .storage import backend_for
from .storage.mount import mount_tree, sync_targets, unmount


def boot_dir(plan: Plan, state_dir: str) -> str:
    """Where the guest's kernel goes: beside its disk files, or in our state dir for LVs."""
    if plan.storage == "dir":
        return os.path.join(plan.storage_root, "domains", plan.hostname)
    return os.path.join(state_dir, "boot", plan.hostname)


def preflight(plan: Plan, settings, need_mib: int) -> None:
    """Checks that must hold right before the first change (and again under the lock)."""
    state = journal.load(settings.paths["state_dir"], plan.hostname)
    if state and not state.complete and journal.deploying(state, settings.paths["lock_dir"]):
        raise Fatal(f"VM '{plan.hostname}' is being deployed by pid {state.begin.get('pid')}", "wait for it to finish")
    if state and not state.complete:
        raise Fatal(f"VM '{plan.hostname}' has an unfinished deploy ({state.summary()})",
                    f"remove what it made with si_rmxenvm {plan.hostname}, then run this again")
    if state and not plan.force:
        raise Fatal(f"VM '{plan.hostname}' already exists (si_lsxenvm lists it)", "remove it with si_rmxenvm or use --force")
    backend = backend_for(plan, settings.paths["lock_dir"])
    backend.validate(plan.hostname, list(plan.disks), need_mib, plan.force or bool(state))
    if os.path.lexists(plan.cfg_path) and not plan.force:
        raise Fatal(f"config {plan.cfg_path} already exists", "remove the VM with si_rmxenvm or use --force")
    if plan.start or state:
        ts = toolstack.find(plan.toolstack)
        if plan.start:
            ts = toolstack.require_running(plan.toolstack)
        if ts and toolstack.hypervisor_running() and plan.hostname in ts.domains():
            raise Fatal(f"domain '{plan.hostname}' is running", f"stop it first: {ts.name} shutdown {plan.hostname}")


@dataclass
class Context:
    """What the steps share: the inputs, and what earlier steps produced."""

    plan: Plan
    image: Image
    kernel: boot.GuestKernel | None
    settings: object
    rep: Reporter
    journal: journal.Journal
    keys: object = None  # a hostkeys.Prefetch started earlier
    confirm: object = None  # a proc.Ahead walking the image: planned from its last walk, or after a copy
    confirm_why: str | None = None  # what a failed confirm means (ImageChanged's default)
    guard: Guard = field(default_factory=Guard)
    backend: object = None
    bases: dict[str, str] = field(default_factory=dict)
    one_pass: bool = False
    root: str = ""
    mounts: list = field(default_factory=list)
    kernel_path: str | None = None
    ramdisk: str | None = None
    fingerprints: list[str] = field(default_factory=list)
    autostart: str | None = None
    record: dict = field(default_factory=dict)
    t0: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Context], None]
    when: Callable[[Context], bool] = lambda c: True


def _bases(c: Context) -> None:
    # A base is built only from a proven walk: its name carries the image's fingerprint.
    found = bases.ensure(c.plan, c.image, c.backend, c.rep, c.journal, build=c.confirm is None)
    if found is None:
        raise ImageChanged(c.confirm.result(), "the image's base disk was removed meanwhile")
    c.bases = found


def _disks(c: Context) -> None:
    populate.make_disks(c.plan, c.backend, c.rep, c.journal, c.bases)


def _filesystems(c: Context) -> None:
    populate.make_filesystems(c.plan, c.image, c.rep, c.one_pass)
    if c.one_pass:
        _walk_again(c)


def _mount(c: Context) -> None:
    c.root, c.mounts = mount_tree(list(c.plan.disks), c.backend, c.journal, c.plan.hostname)


def _copy(c: Context) -> None:
    populate.copy_in(c.image, c.root, c.rep)
    _walk_again(c)


def _walk_again(c: Context) -> None:
    """A copy is kept only if the image walked after it is the one the plan was made from:
    one changed meanwhile (an si_getimage into it) gives a VM of neither image. The walk
    (~0.1 s) runs in a child, beside the steps that follow, and the confirm step waits for it."""
    if c.plan.fingerprint:  # else there is no walk to compare with
        c.confirm = proc.Ahead(survey.survey, c.image.path)
        c.confirm_why = survey.COPIED


def _fixups(c: Context) -> None:
    from .fixups import run_all  # the fixup catalogue loads only when a deploy needs it
    from .fixups.spec import spec_from_plan

    with c.rep.step("Running hooks"):
        spec = spec_from_plan(c.plan, c.keys.ready() if c.keys is not None else None)
        run_all(c.root, spec, only=c.plan.fixups_only or None, skip=c.plan.fixups_skip or None, log=c.rep.fixup_line,
                osinfo=c.image.os)  # said once, before the copy


def _boot(c: Context) -> None:
    plan, guest = c.plan, Guest(c.root)
    if plan.boot == "direct" and not plan.kernel:
        shared = next(iter(sorted(c.bases.values())), None) if c.backend.kind == "dir" else None
        c.kernel_path, c.ramdisk = boot.copy_out(guest, c.kernel, boot_dir(plan, c.settings.paths["state_dir"]),
                                                 c.journal, shared=shared)
    elif plan.boot == "direct":
        c.kernel_path, c.ramdisk = plan.kernel, plan.initrd
    else:
        separate_boot = any(d.mountpoint == "/boot" for d in plan.disks)
        boot.write_grub_cfg(guest, c.kernel, plan.root.vdev, separate_boot, f"{c.image.os.pretty} (si-xen)")
    c.fingerprints = sshdconfig.fingerprints(guest)


def _unmount(c: Context) -> None:
    with c.rep.step("Unmounting and syncing"):
        try:
            unmount(c.mounts)
        except (OSError, proc.ProcError) as e:
            raise Fatal(f"could not unmount the new filesystems: {e}", f"check with findmnt, then si_rmxenvm {c.plan.hostname}") from None
        sync_targets(list(c.plan.disks))


def _config(c: Context) -> None:
    plan = c.plan
    with c.rep.step(f"Creating Xen configuration file: {plan.cfg_path}"):
        text = domain.render(plan, kernel=c.kernel_path, ramdisk=c.ramdisk, cmdline=boot.cmdline(plan.root.vdev),
                             user_dir=c.settings.paths["template_dir"])
        c.journal.made(File(plan.cfg_path), atomic.write, plan.cfg_path, text)


def _autostart(c: Context) -> None:
    c.autostart = toolstack.link_autostart(c.plan.cfg_path, c.journal)


def _confirm(c: Context) -> None:
    """A VM planned from the image's last walk is kept only if the walk begun with the
    deploy finds the same image; it ran beside the steps above instead of before them."""
    fresh = c.confirm.result()
    if fresh is None or fresh.fingerprint != c.plan.fingerprint:
        raise ImageChanged(fresh, c.confirm_why)


def _record(c: Context) -> None:
    plan = c.plan
    c.record = {
        "name": plan.hostname, "image": plan.image_name, "image_path": plan.image_path,
        "image_time": c.image.meta.retrieval_time, "guest": c.image.os.pretty, "created": journal.stamp(),
        "config": plan.cfg_path, "autostart": c.autostart, "storage": plan.storage, "storage_root": plan.storage_root,
        "thin_pool": plan.thin_pool,
        "disks": [{"vdev": d.vdev, "mountpoint": d.mountpoint, "fs": d.fs, "size": human(d.size_mib), "target": d.target}
                  for d in plan.disks],
        "boot": plan.boot, "type": plan.type, "mac": plan.net.mac, "ips": list(plan.net.ips) or ["dhcp"],
        "memory": plan.memory, "version": __version__, "ssh_fingerprints": c.fingerprints,
        "bases": sorted(c.bases.values()), "image_fingerprint": plan.fingerprint,
        "seconds": round(time.monotonic() - c.t0, 2),
    }
    c.journal.finish(c.record)


def _start(c: Context) -> None:
    ts = toolstack.require_running(c.plan.toolstack)
    c.rep.say(f"Starting {c.plan.hostname} with {ts.name} create")
    c.journal.made(Domain(c.plan.hostname, ts.name))
    # The point of no return: once the domain exists, the guard only notes signals and the VM
    # stays. Its console, if wanted, is the caller's, after the deploy (cli/mkxenvm.py).
    ts.create(c.plan.cfg_path, c.guard.keep)


def _fresh(c: Context) -> bool:
    return not c.plan.clone


STEPS = (
    Step("bases", _bases, lambda c: c.plan.clone),
    Step("disks", _disks),
    Step("filesystems", _filesystems, _fresh),
    Step("mount", _mount),
    Step("copy", _copy, lambda c: not c.plan.clone and not c.one_pass),
    Step("fixups", _fixups),
    Step("boot", _boot),
    Step("unmount", _unmount),
    Step("config", _config),
    Step("autostart", _autostart, lambda c: c.plan.autostart),
    Step("confirm", _confirm, lambda c: c.confirm is not None),
    Step("record", _record),
    Step("start", _start, lambda c: c.plan.start),
)


def _warm_steps(user_dir: str | None, config: bool) -> None:
    """Load what the fixups and config steps import and compile (~60 ms of a further VM's
    0.2 s) while the steps before them wait for mkswap, mount and fsync."""
    try:
        from .fixups import run_all  # noqa: F401
        from .fixups.spec import spec_from_plan  # noqa: F401

        if config:
            domain.load(user_dir)
    except Exception:  # only a warmer: the steps themselves report what is wrong
        pass


def _failed(step: Step, e: BaseException, log_path: str | None) -> BaseException:
    """The error an admin sees: the step named, with the failing command's tail."""
    fix = f"the log {log_path} has every command and its output" if log_path else "run with --verbose for the commands"
    if isinstance(e, (proc.ProcError, OSError)):  # Fatal and interrupts already say what happened
        return Fatal(f"step '{step.name}' failed: {e}", fix)
    return e


# Onto disks someone else made and configures (Ganeti): the guest's part of a deploy only.
INSTALL_STEPS = tuple(s for s in STEPS if s.name not in ("bases", "config", "autostart", "start"))


def execute(plan: Plan, image: Image, kernel, settings, rep: Reporter, keys=None, steps=None, confirm=None,
            guard: Guard | None = None) -> dict:
    """Make the VM; return its record. ``keys``: a hostkeys.Prefetch started earlier, or None;
    ``steps``: STEPS (the default) or INSTALL_STEPS; ``confirm``: see _confirm; ``guard``: the
    caller's, to learn whether a signal came after the domain was made (``guard.got``)."""
    steps = steps or STEPS
    state_dir = settings.paths["state_dir"]
    old = journal.load(state_dir, plan.hostname)
    if old is not None:  # --force (preflight refused otherwise): the old VM goes first
        journal.remove(old)
    j = journal.Journal(state_dir, plan.hostname, {
        "name": plan.hostname, "image": plan.image_name, "pid": os.getpid(), "started": journal.stamp(),
        "config": plan.cfg_path, "storage": plan.storage, "storage_root": plan.storage_root, "version": __version__})
    c = Context(plan, image, kernel, settings, rep, j, keys, confirm, guard=guard or Guard(),
                backend=backend_for(plan, settings.paths["lock_dir"]))
    c.one_pass = not plan.clone and populate.one_pass_ok(image.path, plan.disks)
    threading.Thread(target=_warm_steps, args=(settings.paths["template_dir"], any(s.name == "config" for s in steps)),
                     daemon=True).start()
    # A long copy is ahead when there is no base to clone: spare CPU for the key stock.
    stock = hostkeys.Stock(state_dir)
    refill = stock.refill() if not (plan.clone and bases.ready(plan, c.backend)) else None
    step = steps[0]
    try:
        with signals_raise(c.guard):
            for step in steps:
                if refill:
                    refill.tick()
                if step.when(c):
                    j.step(step.name)
                    rep.detail(f"-- step {step.name}")
                    step.run(c)
    except BaseException as e:
        rep.end_progress()
        if refill:
            refill.settle()
        rep.detail(f"step '{step.name}' failed: {e!r}")
        if c.guard.kept:  # the domain exists: nothing after its start undoes the VM
            rep.warn(f"step '{step.name}' failed after VM {plan.hostname} was started ({e}); the VM is kept")
            return c.record
        err = _failed(step, e, rep.log_path)
        err.leftovers = j.rollback()
        for what in err.leftovers:
            rep.warn(f"could not undo: {what}")
        if err is e:
            raise
        raise err from e
    finally:
        j.close()
        if c.confirm is not None and c.confirm is not confirm:
            c.confirm.close()  # a walk begun here and not waited for (a rollback)
    if refill:
        refill.settle()
    return c.record


def deploy(plan: Plan, image: Image, kernel, settings, rep: Reporter, keys=None, need_mib: int = 0,
           confirm=None, guard: Guard | None = None) -> dict:
    """One VM, the same for a single deploy and each VM of a batch: lock, check, log, make."""
    with journal.lock(settings.paths["lock_dir"], plan.hostname):
        preflight(plan, settings, need_mib)  # again, now that no one else can race us
        rep.open_log(os.path.join(settings.paths["log_dir"], f"{plan.hostname}.log"))
        rep.say(describe(plan) + "\n")
        return execute(plan, image, kernel, settings, rep, keys, confirm=confirm, guard=guard)

