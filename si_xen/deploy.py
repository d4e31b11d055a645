"""The deploy: typed steps run in order, each journaling what it makes before making it.

    bases → disks → filesystems → mount → copy → fixups → boot → unmount → config
          → define → autostart → confirm → record → start

(``define``: --toolstack libvirt's persistent domain, whose autostart is then libvirt's; a
rebuild's redefines it, its old definition kept in the journal for the undo.)

A step that fails or is interrupted (SIGINT, SIGTERM, SIGHUP) has every thing made so far
deleted, newest first (journal.py); a crash leaves the journal for si_rmxenvm. Once the
domain exists (``xl create`` returned 0) nothing is undone: the VM is complete and runs.

A rebuild (rebuild.py) runs these steps between its own, in place of the VM it makes again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from . import atomic, bases, boot, domain, journal, populate, proc, sshdconfig, toolstack
from .errors import Fatal
from .guestfs import RecordingGuest
from .headstart import Headstart
from .image import Image, survey
from .image.survey import ImageChanged
from .made import Domain, File, LibvirtAutostart, LibvirtDefinition, LibvirtRedefinition, link_autostart
from .plan import Plan
from .record import VmRecord
from .report import Reporter
from .rollback import Guard, signals_raise
from .storage import backend_for
from .storage.mount import leave, mount_tree
from .toolstack import libvirt


def boot_dir(storage: str, storage_root: str, name: str, state_dir: str) -> str:
    """Where a VM's kernel goes (a plan's or a record's): beside its disk files, or in our state
    dir for LVs."""
    if storage == "dir":
        return os.path.join(storage_root, "domains", name)
    return os.path.join(state_dir, "boot", name)


@dataclass
class Context:
    """What the steps share: the inputs, and what earlier steps produced."""

    plan: Plan
    image: Image
    kernel: boot.GuestKernel | None
    settings: object
    rep: Reporter
    journal: journal.Journal
    hs: Headstart = field(default_factory=Headstart)
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
    record: VmRecord | None = None
    request: object = None  # the Request the VM came from (request.Request), recorded for an update or a rebuild
    source: dict = field(default_factory=dict)  # where the image came from: server, ssh_user, overrides
    owned: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fixup or "boot" -> guest paths it wrote
    owned_facts: dict[str, list | None] = field(default_factory=dict)  # their lstat facts, as unmounted
    identity_dir: str | None = None  # a rebuild's carried identity (carry.py)
    old: journal.State | None = None  # a rebuild's: the VM it replaces
    keep_old: bool = False
    was_running: bool = False
    timeout: float = 120.0
    t0: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Step:
    """One step of a deploy, and of an update (update.py): its context is a Context or an Update."""

    name: str
    run: Callable[[Any], None]
    when: Callable[[Any], bool] = lambda c: True


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
        c.confirm = proc.Ahead(survey.survey, c.image.path, os.path.join(c.settings.paths["state_dir"], "images"))
        c.confirm_why = survey.COPIED


def _fixups(c: Context) -> None:
    from .fixups import run_all  # the fixup catalogue loads only when a deploy needs it
    from .fixups.spec import spec_from_plan

    with c.rep.step("Running hooks"):
        spec = spec_from_plan(c.plan, c.hs.keys_dir())
        if c.identity_dir:
            spec = replace(spec, identity_dir=c.identity_dir)
        if hasattr(c.request, "cloud_init"):  # what the admin asked of the guest's cloud-init
            spec = replace(spec, cloud_init=c.request.cloud_init, user_data=c.request.user_data_text)
        ran = run_all(c.root, spec, only=c.plan.fixups_only or None, skip=c.plan.fixups_skip or None,
                      log=c.rep.fixup_line, osinfo=c.image.os)  # said once, before the copy
    c.owned.update((r[0], r.touched) for r in ran if r.touched)


def _boot(c: Context) -> None:
    plan, guest = c.plan, RecordingGuest(c.root)  # grub.cfg and its kept original are the VM's "boot" paths
    if plan.boot == "direct" and not plan.kernel:
        shared = next(iter(sorted(c.bases.values())), None) if c.backend.kind == "dir" else None
        c.kernel_path, c.ramdisk = boot.copy_out(guest, c.kernel, boot_dir(plan.storage, plan.storage_root, plan.hostname,
                                                                           c.settings.paths["state_dir"]),
                                                 c.journal, shared=shared)
    elif plan.boot == "direct":
        c.kernel_path, c.ramdisk = plan.kernel, plan.initrd
    else:
        separate_boot = any(d.mountpoint == "/boot" for d in plan.disks)
        boot.write_grub_cfg(guest, c.kernel, plan.root.vdev, separate_boot, f"{c.image.os.pretty} (si-xen)")
    c.fingerprints = sshdconfig.fingerprints(guest)
    if guest.touched:
        c.owned["boot"] = tuple(sorted(guest.touched))


def _unmount(c: Context) -> None:
    c.owned_facts = leave(c.root, c.mounts, list(c.plan.disks), c.owned, c.rep,
                          f"check with findmnt, then si_rmxenvm {c.plan.hostname}")


def _config(c: Context) -> None:
    plan = c.plan
    with c.rep.step(f"Creating Xen configuration file: {plan.cfg_path}"):
        text = domain.render(plan, kernel=c.kernel_path, ramdisk=c.ramdisk, cmdline=boot.cmdline(plan.root.vdev),
                             user_dir=c.settings.paths["template_dir"])
        c.journal.made(File(plan.cfg_path), atomic.write, plan.cfg_path, text)
    if _libvirt(c):  # the same VM for libvirt, beside the xl.cfg (which stays: an update's, a rebuild's reference)
        xml = libvirt.xml_path(plan.cfg_path)
        with c.rep.step(f"Creating libvirt domain XML: {xml}"):
            text = domain.render(plan, kernel=c.kernel_path, ramdisk=c.ramdisk, cmdline=boot.cmdline(plan.root.vdev),
                                 user_dir=c.settings.paths["template_dir"], template=domain.LIBVIRT_TEMPLATE)
            c.journal.made(File(xml), atomic.write, xml, text)


def _libvirt(c: Context) -> bool:
    return c.plan.activation.toolstack == "libvirt"


def _virsh():
    # libvirtd answered preflight's check (service.preflight, under the VM's lock): not asked again
    ts = toolstack.find("libvirt")
    if ts is None:
        raise Fatal("virsh is gone", "install libvirt-clients")
    return ts


def _define(c: Context) -> None:
    """``virsh define`` of the XML. A rebuild's replaces the domain libvirt has (the same name and
    uuid), whose definition is saved in the journal first: its undo defines that again, never
    undefines the VM a failed rebuild keeps."""
    ts, name, uuid = _virsh(), c.plan.hostname, domain.domain_uuid(c.plan)
    held = ts.definition(name) if c.old is not None else None  # (xml, autostart), or None: libvirt lost it
    with c.rep.step(f"{'Redefining' if held else 'Defining'} {name} in libvirt (virsh define)"):
        thing = LibvirtRedefinition(name, uuid, *held) if held else LibvirtDefinition(name, uuid)
        c.journal.made(thing, ts.define, libvirt.xml_path(c.plan.cfg_path))
    if held and held[1] and not c.plan.activation.autostart:  # as the request says, like an xl rebuild's link
        ts.autostart(name, on=False)  # the undo above turns it on again


def _autostart(c: Context) -> None:
    if _libvirt(c):  # libvirt's autostart only: a link in /etc/xen/auto too would start it twice
        ts = _virsh()
        c.journal.made(LibvirtAutostart(c.plan.hostname, domain.domain_uuid(c.plan)), ts.autostart, c.plan.hostname)
        return
    c.autostart = link_autostart(c.plan.cfg_path, c.journal)


def _confirm(c: Context) -> None:
    """A VM planned from the image's last walk is kept only if the walk begun with the
    deploy finds the same image; it ran beside the steps above instead of before them."""
    fresh = c.confirm.result()
    if fresh is None or fresh.fingerprint != c.plan.fingerprint:
        raise ImageChanged(fresh, c.confirm_why)


def built(c: Context) -> VmRecord:
    """The record of what the steps made."""
    return VmRecord.built(c.plan, c.image, c.autostart, c.fingerprints, c.bases.values(), time.monotonic() - c.t0,
                          request=_request(c), source=c.source, owned=c.owned, owned_facts=c.owned_facts,
                          initramfs=initramfs_kind(c.kernel, c.plan))


def initramfs_kind(k, plan) -> str:
    """The record's word for the initramfs the VM boots (given: dom0's, with --kernel/--initrd)."""
    if plan.kernel:
        return "given" if plan.initrd else "-"
    return boot.initramfs_kind(k)


def _record(c: Context) -> None:
    c.record = built(c)
    c.journal.finish(c.record)


def _request(c: Context) -> dict:
    """This VM's part of the request (a batch's: its name, addresses and MAC; the image as
    found, cluster.txt's too), as JSON data."""
    r = c.request
    if r is None:
        return {}
    _, ips, _ = r.for_host(r.hostnames.index(c.plan.hostname) if c.plan.hostname in r.hostnames else 0)
    return replace(r, hostnames=(c.plan.hostname,), image=c.plan.image_name, ips=ips, mac=c.plan.net.mac).to_json()


def start(c: Context) -> None:
    ts = toolstack.require_running(c.plan.activation.toolstack)
    c.rep.say(f"Starting {c.plan.hostname} with {ts.start_cmd}")
    c.journal.made(Domain(c.plan.hostname, ts.name))
    # The point of no return: once the domain exists, the guard only notes signals and the VM
    # stays. Its console, if wanted, is the caller's, after the deploy (cli/mkxenvm.py).
    ts.create(c.plan.cfg_path, c.guard.keep, name=c.plan.hostname)


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
    Step("define", _define, _libvirt),
    Step("autostart", _autostart, lambda c: c.plan.activation.autostart),
    Step("confirm", _confirm, lambda c: c.confirm is not None),
    Step("record", _record),
    Step("start", start, lambda c: c.plan.activation.start),
)


def _failed(step: Step, e: BaseException, log_path: str | None) -> BaseException:
    """The error an admin sees: the step named, with the failing command's tail."""
    fix = f"the log {log_path} has every command and its output" if log_path else "run with --verbose for the commands"
    if isinstance(e, (proc.ProcError, OSError)):  # Fatal and interrupts already say what happened
        return Fatal(f"step '{step.name}' failed: {e}", fix)
    return e


# Onto disks someone else made and configures (Ganeti): the guest's part of a deploy only.
INSTALL_STEPS = tuple(s for s in STEPS if s.name not in ("bases", "config", "define", "autostart", "start"))


def execute(plan: Plan, image: Image, kernel, settings, rep: Reporter, hs: Headstart | None = None, steps=None,
            confirm=None, guard: Guard | None = None, request=None, source: dict | None = None,
            identity_dir: str | None = None) -> VmRecord | None:
    """Make the VM; return its record. ``hs``: the work begun for it (keys, a warm-up);
    ``steps``: STEPS or INSTALL_STEPS; ``confirm``: see _confirm; ``guard``: the caller's, to
    learn whether a signal came after the domain was made (``guard.got``); ``request`` (the
    Request) and ``source`` (server, ssh_user, overrides): recorded, for an update or a rebuild;
    ``identity_dir``: an identity carried from the disk's earlier install (carry.py: Ganeti's reinstall)."""
    steps, state_dir = steps or STEPS, settings.paths["state_dir"]
    old = journal.load(state_dir, plan.hostname)
    if old is not None:  # --force (preflight refused otherwise): the old VM goes first
        journal.remove(old)
    c = Context(plan, image, kernel, settings, rep, journal.Journal(state_dir, plan.hostname, VmRecord.begun(plan)),
                hs or Headstart(state_dir), confirm, guard=guard or Guard(),
                backend=backend_for(plan, settings.paths["lock_dir"]), request=request, source=source or {},
                identity_dir=identity_dir)
    c.one_pass = not plan.clone and populate.one_pass_ok(image.path, plan.disks)
    c.hs.beside_steps(not (plan.clone and bases.ready(plan, c.backend)), settings.paths["template_dir"],
                      any(s.name == "config" for s in steps))
    try:
        ran = run_steps(c, steps)
    finally:
        c.journal.close()
        if c.confirm is not None and c.confirm is not confirm:
            c.confirm.close()  # a walk begun here and not waited for (a rollback)
    if ran:
        c.hs.settle()
    return c.record


def run_steps(c: Context, steps) -> bool:
    """The driver: each step whose ``when`` holds, journaled as it starts, with SIGINT, SIGTERM
    and SIGHUP raised as errors. True when all ran; a failure undoes everything made and
    raises, unless the domain exists already (c.guard.kept): then it is warned of, and False."""
    step = steps[0]
    try:
        with signals_raise(c.guard):
            for step in steps:
                c.hs.tick()
                if step.when(c):
                    c.journal.step(step.name)
                    c.rep.detail(f"-- step {step.name}")
                    step.run(c)
    except BaseException as e:
        _undo(c, step, e)
        return False
    return True


def _undo(c: Context, step: Step, e: BaseException) -> VmRecord | None:
    """A step failed or was interrupted: everything made is undone, unless the domain exists."""
    c.rep.end_progress()
    c.hs.settle()
    c.rep.detail(f"step '{step.name}' failed: {e!r}")
    if c.guard.kept:  # the domain exists: nothing after its start undoes the VM
        c.rep.warn(f"step '{step.name}' failed after VM {c.plan.hostname} was started ({e}); the VM is kept")
        return c.record
    err = _failed(step, e, c.rep.log_path)
    err.leftovers = c.journal.rollback()
    for what in err.leftovers:
        c.rep.warn(f"could not undo: {what}")
    if err is e:
        raise
    raise err from e
