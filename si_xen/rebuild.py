"""si_mkxenvm --rebuild: the VM made again in place of itself, keeping its identity.

    stop → carry → aside → (deploy's bases ... confirm) → record → discard → start

Its journal is replaced first by one that keeps the old (journal.Journal.replacing), its identity
carried from the old disks (carry.py), its old config, autostart link, kernel copies and disks
moved aside (made.Aside) until the new record is in: a failure or a signal before that moves
them back and the VM is exactly as before. A libvirt VM's domain is redefined in place (the same
name and uuid); the journal keeps its old definition (made.LibvirtRedefinition), which an undo
defines again.
"""

from __future__ import annotations

import os
from dataclasses import replace

from . import bases, carry, journal, populate, proc, toolstack
from .deploy import STEPS, Context, Step, built, run_steps, start
from .errors import Fatal
from .headstart import Headstart
from .image import Image
from .image.survey import ImageChanged
from .made import Aside, CarryDir, LibvirtRedefinition, LogicalVolume, _present, _rename
from .made import DiskFile as Df
from .plan import Plan
from .record import VmRecord, stamp
from .report import Reporter
from .rollback import Guard
from .storage import backend_for

REPLACEABLE = ("file", "disk-file", "lv")  # what a rebuild moves out of the new VM's way


def _stop(c: Context) -> None:
    toolstack.stop_cleanly(c.old.record.toolstack or "auto", c.plan.hostname, c.timeout, c.rep.say,
                           f"si_mkxenvm --rebuild {c.plan.hostname} again")


def _carry(c: Context) -> None:
    d = carry.carry_dir(c.settings.paths["state_dir"], c.plan.hostname)
    os.makedirs(os.path.dirname(d), mode=0o700, exist_ok=True)
    CarryDir(d).delete()  # a stale one no journal names (it would be, were it ours)
    c.journal.made(CarryDir(d), os.mkdir, d, 0o700)
    with c.rep.step("Carrying the VM's identity from its old disks"):
        got = carry.read_vm(c.old.record, d, c.settings.paths["lock_dir"])
    c.rep.detail(f"carried: {', '.join('/' + p for p in got) or 'nothing'}")
    c.identity_dir = d


def _aside(c: Context) -> None:
    for t in c.old.things:
        if t.kind in REPLACEABLE and not t.path.endswith(".si-old") and _present(t.path):
            aside, n = Aside.name_for(t.path), 0
            while _present(aside):  # an earlier --keep-old's: never overwritten
                n += 1
                aside = f"{Aside.name_for(t.path)}.{n}"
            c.journal.made(Aside(t.path, aside, t.disk), _rename, t.path, aside)


def _rebuilt_record(c: Context) -> None:
    c.record = replace(built(c), created=c.old.record.created, rebuilt=stamp())
    c.journal.finish(c.record)


REBUILD_STEPS = (
    Step("stop", _stop, lambda c: c.was_running),
    Step("carry", _carry),
    Step("aside", _aside),
    *(s for s in STEPS if s.name not in ("record", "start")),
    Step("record", _rebuilt_record),
)


def discard(state_dir: str, st: journal.State, lock_dir: str | None = None) -> VmRecord:
    """A rebuild whose record is in (``st``, the journal with ``replaces``): the things set aside
    removed (with ``keep_old`` the old disks stay, as plain disks of the VM), the carry dir too,
    and the journal rewritten as a deploy's: the old directories, the new things, the old disks
    kept. With ``lock_dir``, the base disks the old VM was cloned from go too once no VM's record
    names them (a rebuild from a newer generation leaves them to nobody: no deploy can clone
    them, their name holds the old fingerprint). Run by the rebuild, or by the next one after a
    crash here."""
    keep_old = bool(st.replaces.get("keep_old"))
    old = {t.path: t for t in st.replaced_things if hasattr(t, "path")}
    asided = {t.path for t in st.things if isinstance(t, Aside)}
    kept: list = []
    for t in st.things:
        if isinstance(t, Aside):
            if keep_old and getattr(old.get(t.path), "disk", False):
                kept.append((LogicalVolume if t.aside.startswith("/dev/") else Df)(t.aside))
            else:
                t.discard()
        elif isinstance(t, CarryDir):
            t.delete()
    # the old VM's directories and base locks (a lock goes only when free), and kept disks of earlier rebuilds
    mine = [t for t in st.replaced_things if t.kind in ("dir", "lock") or (t.kind in REPLACEABLE and t.path not in asided)]
    new = [t.kept() if isinstance(t, LibvirtRedefinition) else t for t in st.things if not isinstance(t, (Aside, CarryDir))]
    rec = st.record
    if kept:
        rec = replace(rec, extra={**rec.extra, "old_disks": [k.path for k in kept]})
    journal.rewrite(state_dir, st.name, st.begin, mine + new + kept, rec)
    if lock_dir is not None and st.replaces.get("record"):
        bases.prune(VmRecord.from_json(st.replaces["record"]), state_dir, lock_dir)
    return rec


def rebuild(plan: Plan, image: Image, kernel, settings, rep: Reporter, old: journal.State, keep_old: bool = False,
            was_running: bool = False, timeout: float = 120.0, hs: Headstart | None = None, confirm=None,
            guard: Guard | None = None, request=None, source: dict | None = None) -> VmRecord:
    """Make VM ``old`` (its complete journal) again from ``image`` as ``plan`` says, keeping its
    identity; return its new record. Until the record, a failure or a signal puts it back as it was."""
    state_dir = settings.paths["state_dir"]
    j = journal.Journal.replacing(state_dir, plan.hostname, VmRecord.begun(plan), old, keep_old)
    c = Context(plan, image, kernel, settings, rep, j, hs or Headstart(state_dir), confirm, guard=guard or Guard(),
                backend=backend_for(plan, settings.paths["lock_dir"]), request=request, source=source or {},
                old=old, keep_old=keep_old, was_running=was_running, timeout=timeout)
    c.one_pass = not plan.clone and populate.one_pass_ok(image.path, plan.disks)
    c.hs.beside_steps(not (plan.clone and bases.ready(plan, c.backend)), settings.paths["template_dir"], True)
    try:
        try:
            run_steps(c, REBUILD_STEPS)
        except Fatal as e:
            if isinstance(e, ImageChanged) or getattr(e, "leftovers", None):
                raise
            back = Fatal(f"{e.problem}; VM '{plan.hostname}' is as it was (its disks, config and identity)", e.fix)
            raise back from e
        c.journal.step("discard")
        try:
            c.record = discard(state_dir, journal.load(state_dir, plan.hostname), settings.paths["lock_dir"])
        except (OSError, proc.ProcError) as e:
            rep.warn(f"VM {plan.hostname} is rebuilt, but its old things could not all be removed ({e}); "
                     f"si_mkxenvm --rebuild {plan.hostname} removes them")
        c.journal.close()
        c.journal = journal.Journal.append_to(state_dir, plan.hostname)
        if plan.activation.start:
            c.journal.step("start")
            try:
                start(c)
            except (OSError, proc.ProcError, Fatal) as e:
                shown = toolstack.for_messages(plan.activation.toolstack).start_shown(plan.hostname, plan.cfg_path)
                raise Fatal(f"VM '{plan.hostname}' was rebuilt but not started: {e}", f"start it with {shown}") from None
    finally:
        c.journal.close()
        if c.confirm is not None and c.confirm is not confirm:
            c.confirm.close()
    c.hs.settle()
    return c.record
