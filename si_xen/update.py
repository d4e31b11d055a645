"""si_updatexenvm's core: a VM brought to its image's current generation, its identity kept.

    stop → snapshot → mount → plan → delete → transfer → fixups → boot (updateboot.py) → unmount → swap → kernel → discard
         → record → start

Planned from manifests (image/manifest.py), not by a whole-tree rsync: the generation the VM is
at, the image as it is now and the VM's own tree give what to delete, fetch and keep
(updateplan.py), under SystemImager's exclusions and the VM's identity (excludes.py); rsync then
copies just the listed paths. Where the storage can copy on write, the update is made on a copy
that replaces the disk only when complete (swap); else in place, under the journal's update
section, so that a crash leaves a VM the next si_updatexenvm finishes or si_rmxenvm removes.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from dataclasses import dataclass, field, replace

from . import journal, proc, prune, sshdconfig, toolstack, updateboot
from .deploy import Step
from .errors import Fatal
from .guestfs import Guest
from .image import manifest, survey
from .made import LogicalVolume
from .plan import Disk
from .record import VmRecord, stamp
from .rollback import Guard, signals_raise
from .storage import backend as storage_backend
from .storage.mount import leave, mount_tree, unmount

DELETE = ("image", "none", "local")  # the image pass's --delete, --no-delete, --delete-local
KEPT_UPDATES = 10  # the record keeps the last updates' summaries


@dataclass(frozen=True)
class Options:
    delete: str = "image"
    dry_run: bool = False
    restart: bool = False
    timeout: float = 120.0


@dataclass
class Update:
    """One VM's update: its record, the image it goes to, and what the steps found."""

    state: journal.State
    image: object  # image.Image: the tree si_mkxenvm would deploy now
    settings: object
    rep: object
    opts: Options
    journal: journal.Journal | None = None
    backend: object = None
    disks: list[Disk] = field(default_factory=list)  # the VM's filesystems, targets as updated (copies or not)
    copies: dict[str, str] = field(default_factory=dict)  # disk target -> its copy being updated
    root: str = ""
    mounts: list = field(default_factory=list)
    survey: object = None  # the image's walk now
    walk: object = None  # proc.Ahead giving it
    new: dict = field(default_factory=dict)  # its manifest
    changes: object = None  # updateplan.Changes
    ran: list = field(default_factory=list)
    owned: dict = field(default_factory=dict)
    owned_facts: dict = field(default_factory=dict)
    fingerprints: list[str] = field(default_factory=list)
    kernel_files: dict[str, str] = field(default_factory=dict)  # where Xen reads a kernel -> its new copy ("": none now)
    initramfs: str | None = None  # what boots now (record.initramfs), where the boot step looked
    boot_changed: bool = False
    rerun_all: bool = False
    stopped: bool = False  # shut down by this update: started again if it is undone
    old_disks: list[str] = field(default_factory=list)  # the disks a swap set aside, for the discard
    was_running: bool = False
    record: VmRecord | None = None
    t0: float = field(default_factory=time.monotonic)

    @property
    def rec(self) -> VmRecord:
        return self.state.record

    @property
    def facts_dir(self) -> str:
        return os.path.join(self.settings.paths["state_dir"], "images")


def _stop(u: Update) -> None:
    toolstack.stop_cleanly(u.rec.toolstack or "auto", u.rec.name, u.opts.timeout, u.rep.say,
                           f"si_updatexenvm {u.rec.name} again")
    u.stopped = True


def _snapshot(u: Update) -> None:
    snap = getattr(u.backend, "snapshot", None)
    copies = {d.target: snap(d.target, u.journal) for d in u.disks} if snap else {}
    if copies and all(copies.values()):
        u.copies = copies
        u.disks = [replace(d, target=copies[d.target]) for d in u.disks]
    else:  # one disk that cannot be copied: the whole VM in place (its disks must stay one generation)
        made = [t for t in u.journal.state.update_things if getattr(t, "path", None) in set(copies.values())]
        for thing in made:
            thing.delete()  # a file's unlink, an LV's lvremove
    u.rep.detail(f"updating {'a copy of each disk' if u.copies else 'in place'}")


def _mount(u: Update) -> None:
    u.root, u.mounts = mount_tree(u.disks, u.backend, u.journal, u.rec.name)


def _plan(u: Update) -> None:
    from . import excludes

    with u.rep.step("Comparing the VM with the image"):
        rules = excludes.rules_for(u.root, u.image.path, u.image.os, bool(u.rec.request.get("nameservers")))
        vm = survey.manifest_of(u.root)
        u.rep.detail(f"walked the VM: {len(vm)} entries")
        need = _changes(u, vm, rules.classify)
    for mp, n in need.items():
        _room(n, os.path.join(u.root, mp.lstrip("/")), f"{u.rec.name}'s {mp}",
              "grow the VM's disk or free space in it, then run si_updatexenvm again")
    if u.rec.storage == "dir":  # disk images are sparse (and copies reflinks): new blocks come from the host
        _room(sum(need.values()), os.path.dirname(u.disks[0].target), f"{os.path.dirname(u.disks[0].target)} "
              f"(where {u.rec.name}'s disk images are)", "free space there, then run si_updatexenvm again")


def _room(need: int, path: str, what: str, fix: str) -> None:
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise Fatal(f"{what} needs {(need - free) >> 20} MiB more for this update (has {free >> 20} MiB free)", fix)


def _changes(u: Update, vm: dict, classify) -> dict[str, int]:
    """What to delete, fetch, keep and rerun (updateplan.py) from the generation the VM is at, the
    image now and the VM's own tree, a new kernel's memory need checked; returns the room needed
    on each of its filesystems (by mount point)."""
    from . import updateplan
    from .fixups import runner

    old = manifest.load(u.facts_dir, u.rec.image_fingerprint)
    if u.survey is None:  # the image's walk, begun with the update in a child of its own
        u.survey = u.walk.result()
        u.rep.detail(f"the image's walk: {u.survey and u.survey.fingerprint}")
        if u.survey is None:
            raise Fatal(f"could not walk image '{u.image.name}' ({u.image.path})", "check that it is readable")
    u.new = new = manifest.load(u.facts_dir, u.survey.fingerprint) or survey.manifest_of(u.image.path)
    chosen = runner.select(u.rec.request.get("fixups_only") or None, u.rec.request.get("fixups_skip") or None)
    c = updateplan.plan_update(old, new, vm, classify, u.rec.owned, {f.name: f.watching for f in chosen},
                               [f.name for f in chosen], u.opts.delete)
    u.changes = c = replace(c, rerun=tuple(f.name for f in chosen)) if u.rerun_all else c
    if not u.rec.request and "network" in c.rerun:  # its netmask, gateway, nameservers were never recorded
        u.changes = c = replace(c, rerun=tuple(f for f in c.rerun if f != "network"))
        u.rep.warn(f"VM '{u.rec.name}' was made by an older si-xen that kept no network settings: its network "
                   "configuration is left as it is (the update touched what that fixup watches)")
    if old is None:
        u.rep.warn(f"VM '{u.rec.name}' has no manifest of the generation it was made from (made by an older si-xen): "
                   "files the image removed since are kept; --delete-local removes whatever the image lacks")
    # The image's /boot since the VM's generation too: an update killed after its copy (the VM's
    # tree already new) must still put the new kernel where Xen reads it when run again.
    moved = manifest.diff(old, new) if old is not None else manifest.Diff()
    u.boot_changed = any(p.startswith("/boot/") for p in (*c.fetch, *c.delete, *moved.added, *moved.changed,
                                                          *moved.removed))
    if u.boot_changed:
        updateboot.check_memory(u)
    return updateplan.needed_by_mount(c, new, vm, [d.mountpoint for d in u.disks])


def _boot_changed(u: Update) -> bool:
    return u.boot_changed


def _delete(u: Update) -> None:
    guest = Guest(u.root)
    for p in u.changes.delete:  # deepest first: a directory is empty when its turn comes
        host = guest.path(p.lstrip("/"), follow=False)
        if os.path.isdir(host) and not os.path.islink(host):
            os.rmdir(host)
        else:
            os.unlink(host)


def _transfer(u: Update) -> None:
    from . import updateplan

    if not u.changes.fetch:
        return
    with tempfile.NamedTemporaryFile(prefix="si-xen-update.", dir="/run" if os.path.isdir("/run") else None) as f:
        f.write(updateplan.files_from(u.changes.fetch))
        f.flush()
        with u.rep.step(f"Copying {len(u.changes.fetch)} entries from {u.image.path}"):
            proc.run(updateplan.rsync_argv(u.image.path, u.root, f.name))
    # What was copied is what was planned, or the image changed meanwhile (an si_getimage into it):
    # the VM would hold neither generation. One lstat per entry copied, not a walk.
    image = Guest(u.image.path)
    for p in u.changes.fetch:
        now, planned = image.facts(p.lstrip("/")), u.new[p]
        if now is None or list(now[:3]) != list(planned[:3]) or (not stat.S_ISDIR(planned[0]) and list(now[3:5]) != list(planned[3:5])):
            raise Fatal(f"image '{u.image.name}' changed while it was copied ({p})",
                        "let whatever writes to the image (si_getimage, si_updateclient) finish, then run this again")


def _fixups(u: Update) -> None:
    from .fixups import run_all
    from .fixups.spec import spec_from_record

    with u.rep.step(f"Running hooks again: {', '.join(u.changes.rerun)}"):
        spec = replace(spec_from_record(u.rec), image_source=u.image.path, image=u.image.name)  # the tree it is now from
        u.ran = run_all(u.root, spec, only=u.changes.rerun, log=u.rep.fixup_line, osinfo=u.image.os)
    u.owned = dict(u.rec.owned)
    u.owned.update((r[0], tuple(sorted(set(u.owned.get(r[0], ())) | set(r.touched)))) for r in u.ran if r.touched)
    u.fingerprints = sshdconfig.fingerprints(Guest(u.root))


def _unmount(u: Update) -> None:
    u.owned_facts = leave(u.root, u.mounts, u.disks, u.owned, u.rep, f"check with findmnt, then si_updatexenvm {u.rec.name}")


def _swap(u: Update) -> None:
    u.old_disks = [u.backend.swap(target, copy, u.journal) for target, copy in u.copies.items()]


def _record(u: Update) -> None:
    c, rec = u.changes, u.rec
    summary = {"at": stamp(), "from": rec.image_fingerprint, "to": u.survey.fingerprint, "image_time": u.image.meta.retrieval_time,
               "fetched": len(c.fetch), "deleted": len(c.delete), "kept_local": len(c.kept_local), "fixups": list(c.rerun),
               "mode": "copy" if u.copies else "in place", "seconds": round(time.monotonic() - u.t0, 2)}
    request = {**rec.request, "image": u.image.name} if rec.request else {}  # --image: the VM follows that one now
    u.record = replace(rec, image=u.image.name, request=request, image_path=u.image.path, image_time=u.image.meta.retrieval_time,
                       image_fingerprint=u.survey.fingerprint, owned=u.owned, owned_facts=u.owned_facts,
                       ssh_fingerprints=tuple(u.fingerprints) or rec.ssh_fingerprints, updated=summary["at"],
                       updates=(*rec.updates, summary)[-KEPT_UPDATES:], initramfs=u.initramfs or rec.initramfs)
    u.journal.close()  # the journal is the VM's record again: the update's section goes with the rewrite
    journal.rewrite(u.settings.paths["state_dir"], rec.name, u.state.begin, u.state.things, u.record)
    try:  # this walk the image's last (the next deploy's start; the generation left can go), over that one's only
        survey.remember(u.facts_dir, u.image.path, u.survey, over=rec.image_fingerprint)
    except OSError as e:
        u.rep.warn(f"could not remember the image's walk for the next VM: {e}")
    prune.unused(u.settings.paths["state_dir"], u.rep.warn)


def _discard(u: Update) -> None:
    """The old disks, kept beside the new ones since the swap: a crash before the record rolls
    the swap forward (made.Swap), so nothing needs them any more."""
    for old in u.old_disks:
        if old.startswith("/dev/"):  # an LV (lvm.py's swap): its /dev path is only a symlink
            LogicalVolume(old).delete()
        elif os.path.lexists(old):
            os.unlink(old)


def _start(u: Update) -> None:
    ts = toolstack.require_running(u.rec.toolstack or "auto")
    u.rep.say(f"Starting {u.rec.name} with {ts.start_shown(u.rec.name, u.rec.config)}")
    ts.create(u.rec.config, lambda signum: None, u.rec.name)  # recorded already: a signal now changes nothing


def _start_shown(u: Update) -> str:
    """The start command for the admin's fix (``xl create CFG``, ``virsh ... start NAME``)."""
    return toolstack.for_messages(u.rec.toolstack).start_shown(u.rec.name, u.rec.config)


STEPS = (
    Step("stop", _stop, lambda u: u.was_running),
    Step("snapshot", _snapshot),
    Step("mount", _mount),
    Step("plan", _plan),
    Step("delete", _delete),  # always journaled: from here on, in place, the VM's tree may have changed
    Step("transfer", _transfer, lambda u: bool(u.changes.fetch)),
    Step("fixups", _fixups),
    Step("boot", updateboot.run, _boot_changed),
    Step("unmount", _unmount),
    Step("swap", _swap, lambda u: bool(u.copies)),
    Step("kernel", updateboot.put_in_place, lambda u: bool(u.kernel_files)),
    Step("discard", _discard, lambda u: bool(u.old_disks)),
    Step("record", _record),
    Step("start", _start, lambda u: u.was_running),
)


def disks_of(rec: VmRecord) -> list[Disk]:
    return [Disk(d.mountpoint.strip("/").replace("/", "-") or "disk", d.mountpoint, d.fs, 0, "", d.vdev, d.target)
            for d in rec.disks if d.mountpoint]


def finish_unfinished(state: journal.State, settings, rep) -> tuple[journal.State, bool]:
    """An update killed before it recorded: its mounts and copies undone (a swap begun is finished
    by its own undo), the journal back to the VM's record. A VM updated in place, or killed
    between its disks' swaps, is then part-way between two generations: the update that follows compares it with its record's generation as
    always, brings it to the image's current one, and reruns every fixup (what the killed one
    copied before its fixups ran is no change any more). Returns the state and that need."""
    if not state.update:
        return state, False
    rep.warn(f"VM '{state.name}': an earlier update (pid {state.update.get('pid', '?')}) did not finish; finishing it")
    in_place = IN_PLACE_POINT in state.update_steps and not any(t.kind in ("disk-file", "lv", "swap")
                                                                for t in state.update_things)  # no copy made
    # Killed between two disks' swaps: the undo rolls the swapped ones forward and drops the other
    # copies, so the VM's disks are of two generations; the next update brings it whole, as in place.
    swaps = sum(t.kind == "swap" for t in state.update_things)
    copies = sum(t.kind in ("disk-file", "lv") for t in state.update_things)
    in_place = in_place or 0 < swaps < copies
    failed = journal.undo(state.update_things)
    if failed:
        raise Fatal(f"could not undo the unfinished update of VM '{state.name}': {'; '.join(failed)}",
                    f"fix that (findmnt, losetup -a), then run si_updatexenvm {state.name} again")
    journal.rewrite(settings.paths["state_dir"], state.name, state.begin, state.things, state.record)
    return journal.load(settings.paths["state_dir"], state.name), in_place


def update(state: journal.State, image, settings, rep, opts: Options, running: bool,
           rerun_all: bool = False) -> VmRecord:
    """Bring the VM (its complete journal ``state``) to ``image``; return its new record.
    ``rerun_all``: every fixup runs again (finish_unfinished says when)."""
    rec = state.record
    u = Update(state, image, settings, rep, opts, was_running=running, rerun_all=rerun_all)
    u.backend = storage_backend(rec.storage, rec.storage_root, rec.thin_pool, settings.paths["lock_dir"])
    u.disks = disks_of(rec)
    u.journal = journal.Journal.resume(settings.paths["state_dir"], rec.name,
                                       {"from": rec.image_fingerprint, "pid": os.getpid(),
                                        "started": stamp(), "delete": opts.delete})
    u.walk = proc.Ahead(survey.survey, image.path, u.facts_dir)  # beside the VM's mount and walk
    guard, step = Guard(), STEPS[0]
    try:
        with signals_raise(guard):
            for step in STEPS:
                if step.when(u):
                    if u.record is None:  # once recorded, the journal is the VM's record again
                        u.journal.step(step.name)
                    rep.detail(f"-- step {step.name}")
                    step.run(u)
    except BaseException as e:
        err = _failed(u, step, e)
        if err is e:
            raise
        raise err from e
    finally:
        u.journal.close()
        if u.walk.status is None:
            u.walk.close()
    return u.record


# Once the VM's own tree is changed in place, an undo cannot give it back: the update is finished
# (by the next si_updatexenvm) instead. Before that, or on a copy, undoing loses nothing.
IN_PLACE_POINT = "delete"


def _failed(u: Update, step: Step, e: BaseException) -> BaseException:
    """The error to raise, once what can be undone is: a copy dropped, the VM as it was; in place
    and begun, the update section kept (si_lsxenvm says so; the next si_updatexenvm finishes it)."""
    u.rep.end_progress()
    u.rep.detail(f"step '{step.name}' failed: {e!r}")
    name, steps = u.rec.name, u.journal.state.update_steps
    what = e.problem if isinstance(e, Fatal) else f"step '{step.name}' failed: {e}"
    if u.record is not None:  # recorded: only the start is left, and the update stands
        return Fatal(f"VM '{name}' was updated but not started: {what}", f"start it with {_start_shown(u)}")
    if (not u.copies and IN_PLACE_POINT in steps) or "swap" in steps:
        try:
            unmount(u.mounts)
        except (OSError, proc.ProcError) as err:
            u.rep.warn(f"could not unmount {u.root}: {err}")
        return Fatal(f"{what}; VM '{name}' is part-updated",
                     f"fix that, then run si_updatexenvm {name} again to finish (or si_rmxenvm {name})")
    for thing in u.journal.rollback():  # the copies and mounts go; the journal is the VM's record again
        u.rep.warn(f"could not undo: {thing}")
    if u.stopped and not ts_gone(u):
        what += "; it was started again, as it was"
    if isinstance(e, Fatal):
        return Fatal(f"{what}; VM '{name}' was not changed", e.fix)
    if isinstance(e, (OSError, proc.ProcError)):
        return Fatal(f"{what}; VM '{name}' was not changed", "the log has every command and its output")
    return e  # an interrupt: said as such


def ts_gone(u: Update) -> bool:
    """A VM shut down for an update that did not happen runs again (False), unless it cannot be
    started (True: warned)."""
    try:
        _start(u)
        return False
    except Exception as err:  # the update's own failure is what the admin is told; this is a warning
        u.rep.warn(f"could not start {u.rec.name} again: {err} ({_start_shown(u)})")
        return True


def dry_run(state: journal.State, image, settings, rep, opts: Options, running: bool = False):
    """What an update would do, from the VM's disks read in a private mount namespace, read-only
    (vmread.read_vm): nothing is written, not even a manifest."""
    from . import vmread

    u = Update(state, image, settings, rep, opts)
    u.survey = survey.survey(image.path)
    vm, notes, classify = vmread.read_vm(state.record, vmread.read_mode(state.record, running), settings.paths["lock_dir"])
    for n in notes:
        rep.warn(n.removeprefix("WARNING: "))
    _changes(u, vm, classify)
    return u.changes
