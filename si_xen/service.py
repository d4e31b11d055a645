"""The one way VMs are made, whichever front end asked: a Request in, VmRecords out.

    make_vms     si_mkxenvm: plan every VM, check, then make one or a batch; a copy of an
                 image that changed under it is made again (at most ATTEMPTS times)
    install_onto Ganeti's create/import: the guest's part onto the instance's own disks

Both plan (planner), check the boot and memory, take the VM's lock, open its log and run
the deploy's steps (deploy.execute). The front ends parse, print and attach consoles.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from . import bases, batch, deploy, journal, planner, toolstack
from .errors import Fatal
from .headstart import Headstart
from .image import Image, survey
from .image.survey import ImageChanged
from .plan import Plan, describe
from .record import VmRecord
from .report import Reporter
from .request import Request
from .rollback import Guard, signals_raise
from .storage import backend_for

ATTEMPTS = 3  # deploys of one command while the image keeps changing under them


@dataclass
class Outcome:
    plans: list[Plan]
    records: list[VmRecord]  # none for a dry run


def make_vms(req: Request, image: Image, settings, rep: Reporter, hs: Headstart, guard: Guard,
             ask: Callable[[str], bool] = lambda question: True, source: dict | None = None) -> Outcome:
    """Every VM of ``req``; ``hs``: the work begun at the command's start; ``guard``: the
    caller's, so it learns of a signal that came once a domain was made; ``ask``: whether an
    existing VM may be overwritten (--force); ``source``: where the image came from (server,
    ssh_user, overrides), for each VM's record."""
    facts = None if req.dry_run else os.path.join(settings.paths["state_dir"], "images")
    tree, plans, pending = _ahead(req, image, hs.walk, facts, settings, rep.warn)
    with signals_raise(guard):  # SIGINT, SIGTERM, SIGHUP: Interrupted, until the domain is made
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return _make(req, image, settings, rep, plans, hs, tree, pending, facts, guard, ask, source or {})
            except ImageChanged as e:  # undone already: plan again from the image as it is
                if attempt == ATTEMPTS:
                    raise Fatal(f"image '{image.name}' changed under each of {ATTEMPTS} deploys ({e.problem}); "
                                "nothing was kept", e.fix) from None
                rep.say(f"Not kept: {e.problem}; planning again")
                tree = e.survey or survey.survey(image.path, facts)
                plans, pending = _plans(req, image, tree, rep.warn), None
    raise AssertionError("unreachable")


def install_onto(req: Request, image: Image, settings, rep: Reporter, log_name: str) -> VmRecord:
    """The image onto disks their owner made (``req.storage.disks``): the install steps only,
    journaled, so that the next run for this instance undoes what a crash left."""
    tree = survey.survey(image.path)
    plan = planner.make_plan(req, image, tree)
    kernel = planner.check_boot(plan, image, os.path.join(settings.paths["state_dir"], "images"), req.said.memory)
    backend_for(plan).validate(plan.hostname, list(plan.disks), 0, True)
    return _one(plan, image, kernel, settings, rep, log_name, steps=deploy.INSTALL_STEPS, request=req)


def preflight(plan: Plan, settings, need_mib: int) -> None:
    """Checks that must hold right before the first change (and again under the lock)."""
    state = journal.load(settings.paths["state_dir"], plan.hostname)
    if state and not state.complete and journal.deploying(state, settings.paths["lock_dir"]):
        raise Fatal(f"VM '{plan.hostname}' is being deployed by pid {state.pid}", "wait for it to finish")
    if state and not state.complete:
        raise Fatal(f"VM '{plan.hostname}' has an unfinished deploy ({state.summary()})",
                    f"remove what it made with si_rmxenvm {plan.hostname}, then run this again")
    if state and not plan.force:
        raise Fatal(f"VM '{plan.hostname}' already exists (si_lsxenvm lists it)", "remove it with si_rmxenvm or use --force")
    backend = backend_for(plan, settings.paths["lock_dir"])
    backend.validate(plan.hostname, list(plan.disks), need_mib, plan.force or bool(state))
    if os.path.lexists(plan.cfg_path) and not plan.force:
        raise Fatal(f"config {plan.cfg_path} already exists", "remove the VM with si_rmxenvm or use --force")
    act = plan.activation
    if act.start or state:
        ts = toolstack.find(act.toolstack)
        if act.start:
            ts = toolstack.require_running(act.toolstack)
        if ts and toolstack.hypervisor_running() and plan.hostname in ts.domains():
            raise Fatal(f"domain '{plan.hostname}' is running", f"stop it first: {ts.name} shutdown {plan.hostname}")


def deploy_one(plan: Plan, image: Image, kernel, settings, rep: Reporter, hs: Headstart | None = None,
               need_mib: int = 0, confirm=None, guard: Guard | None = None, **recorded) -> VmRecord:
    """One VM of si_mkxenvm, alone or in a batch: checked again under its lock, then made;
    ``recorded``: its request and source (deploy.execute)."""
    def check() -> None:
        preflight(plan, settings, need_mib)  # again, now that no one else can race us

    return _one(plan, image, kernel, settings, rep, f"{plan.hostname}.log", check, announce=True, hs=hs,
                confirm=confirm, guard=guard, **recorded)


def _one(plan, image, kernel, settings, rep, log_name, check=None, announce=False, **kw) -> VmRecord:
    """Lock, check, log, make: the same for every front end (``announce``: the plan said first)."""
    with journal.lock(settings.paths["lock_dir"], plan.hostname):
        if check:
            check()
        rep.open_log(os.path.join(settings.paths["log_dir"], log_name))
        if announce:
            rep.say(describe(plan) + "\n")
        return deploy.execute(plan, image, kernel, settings, rep, **kw)


def _worker(plan: Plan, image: Image, kernel, settings, req: Request | None = None, source: dict | None = None) -> VmRecord:
    """A batch's VM: quietly, with its own log, lock and keys."""
    rep = Reporter(quiet=True)
    hs = Headstart.for_vm(image, plan.hostname, settings.paths["state_dir"])
    try:
        return deploy_one(plan, image, kernel, settings, rep, hs, request=req, source=source)
    finally:
        rep.close()
        hs.close()


def _plans(req: Request, image: Image, tree, warn) -> list[Plan]:
    return [planner.make_plan(req, image, tree, i, warn) for i in range(len(req.hostnames))]


def _ahead(req: Request, image: Image, walk, facts_dir, settings, warn):
    """The survey to plan from, the plans, and the walk that must confirm them (or None). A further VM of
    one image clones a base made from the image's last walk: it is planned from that walk and
    made while the new walk (~0.1 s of stat calls) runs, rather than after it."""
    last = survey.remembered(facts_dir, image.path) if walk and len(req.hostnames) == 1 else None
    if last is not None:
        said: list[str] = []
        try:
            plans = _plans(req, image, last, said.append)
            if plans[0].clone and bases.ready(plans[0], backend_for(plans[0], settings.paths["lock_dir"])):
                for m in said:
                    warn(m)
                return last, plans, walk
        except Fatal:
            pass  # said again, from the image as it is
    tree = (walk and walk.result()) or survey.survey(image.path, facts_dir)
    return tree, _plans(req, image, tree, warn), None


def _make(req, image, settings, rep, plans, hs, tree, pending, facts_dir, guard, ask, source) -> Outcome:
    plan = plans[0]
    kernel = planner.check_boot(plan, image, facts_dir, req.said.memory)
    need = 0
    if plan.storage == "dir" and not plan.clone:  # a clone needs no room for a copy
        need = sum(survey.needed_mib(*u) for u in tree.usage([d.mountpoint for d in plan.disks if d.mountpoint]).values())
    for p in plans:
        preflight(p, settings, need * len(plans))
    if req.dry_run:
        return Outcome(plans, [])
    existing = [p.hostname for p in plans if os.path.lexists(p.cfg_path)]
    if plan.force and existing and not ask(f"Overwrite VM {', '.join(existing)}?"):
        raise Fatal("not confirmed", "nothing was changed")
    if len(plans) > 1:
        rep.say(f"Deploying {len(plans)} VMs from image '{image.name}'")
        done, failed = batch.run(plans, _worker, (image, kernel, settings, req, source), rep)
        if done:
            _remember(plan, kernel, facts_dir, image, tree, rep)
        if failed:
            raise Fatal(f"{len(failed)} of {len(plans)} VMs failed: {'; '.join(failed)}",
                        f"see the logs in {settings.paths['log_dir']}")
        return Outcome(plans, done)
    rec = deploy_one(plan, image, kernel, settings, rep, hs, need, pending, guard, request=req, source=source)
    _remember(plan, kernel, facts_dir, image, tree if pending is None else None, rep)  # else the walk remembered
    return Outcome(plans, [rec])


def _remember(plan, kernel, facts_dir, image, tree, rep) -> None:
    """The boot facts and the image's walk, for the next VM: kept once a VM exists, and a
    VM that exists is not failed for them."""
    try:
        planner.remember_boot(plan, kernel, facts_dir)
        if tree is not None:
            survey.remember(facts_dir, image.path, tree)
    except OSError as e:
        rep.warn(f"could not remember the image's walk for the next VM: {e}")
