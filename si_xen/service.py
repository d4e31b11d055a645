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

from . import bases, batch, deploy, domain, journal, planner, prune, rebuild, toolstack
from .errors import Fatal
from .headstart import Headstart
from .image import Image, survey
from .image.survey import ImageChanged
from .made import LibvirtDefinition
from .plan import Plan, describe
from .record import VmRecord
from .report import Reporter
from .request import Request
from .rollback import Guard, signals_raise
from .storage import backend_for
from .toolstack import libvirt

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


def install_onto(req: Request, image: Image, settings, rep: Reporter, log_name: str,
                 identity_dir: str | None = None) -> VmRecord:
    """The image onto disks their owner made (``req.storage.disks``): the install steps only,
    journaled, so that the next run for this instance undoes what a crash left; ``identity_dir``:
    the identity a reinstall keeps (carry.py)."""
    tree = survey.survey(image.path)
    plan = planner.make_plan(req, image, tree)
    kernel = planner.check_boot(plan, image, os.path.join(settings.paths["state_dir"], "images"), req.said.memory)
    backend_for(plan).validate(plan.hostname, list(plan.disks), 0, True)
    return _one(plan, image, kernel, settings, rep, log_name, steps=deploy.INSTALL_STEPS, request=req,
                identity_dir=identity_dir)


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
    if act.toolstack == "libvirt":
        xml = libvirt.xml_path(plan.cfg_path)
        if os.path.lexists(xml) and not plan.force:  # the admin's (a virsh dumpxml kept there): never overwritten
            raise Fatal(f"libvirt XML {xml} already exists", "move it away, remove the VM with si_rmxenvm, or use --force")
        virsh = toolstack.require_libvirt()
        made = {t.uuid for t in state.things if isinstance(t, LibvirtDefinition)} if state else set()
        # si-xen's own domain (--force over its VM), by uuid: one the admin defined since is not
        ours = bool(made) and ("" in made or virsh.domuuid(plan.hostname) in made)
        if plan.hostname in virsh.defined() and not ours:  # an undo would undefine the admin's domain
            raise Fatal(f"libvirt already has a domain '{plan.hostname}' that si-xen did not make",
                        f"choose another --hostname, or remove it first ({virsh.shown('undefine', plan.hostname)})")
    if act.start or state:
        ts = toolstack.find(act.toolstack)
        if act.start:
            ts = toolstack.require_running(act.toolstack)
        if ts and toolstack.hypervisor_running() and plan.hostname in ts.domains():
            raise Fatal(f"domain '{plan.hostname}' is running", f"stop it first: {ts.shown('shutdown', plan.hostname)}")


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
    kernel = planner.check_boot(plans[0], image, facts_dir, req.said.memory)
    plans = planner.noted(plans, kernel)
    plan = plans[0]
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


# -- si_mkxenvm --rebuild -------------------------------------------------------------------

def rebuildable(state: journal.State | None, name: str, settings, rep: Reporter) -> journal.State:
    """The VM's complete journal, an earlier rebuild's leftovers dealt with first (rolled back,
    or, once its record was in, only discarded); a FATAL for what cannot be rebuilt."""
    state_dir = settings.paths["state_dir"]
    if state is None:
        raise Fatal(f"no VM '{name}' made by si_mkxenvm", "si_lsxenvm lists the VMs")
    if state.replaces is not None and state.complete:
        rep.warn(f"VM '{name}': an earlier rebuild (pid {state.pid or '?'}) was made but not tidied; removing what it set aside")
        rebuild.discard(state_dir, state, settings.paths["lock_dir"])
        state = journal.load(state_dir, name)
    elif state.replaces is not None:
        rep.warn(f"VM '{name}': an earlier rebuild (pid {state.pid or '?'}) stopped in step '{state.step}'; "
                 "putting the VM back as it was first")
        failed = journal.restore(state_dir, state)
        if failed:
            raise Fatal(f"could not undo the unfinished rebuild of VM '{name}': {'; '.join(failed)}",
                        f"fix that (findmnt, losetup -a), then run si_mkxenvm --rebuild {name} again, or si_rmxenvm {name}")
        state = journal.load(state_dir, name)
    if not state.complete:
        raise Fatal(f"VM '{name}' has an unfinished deploy ({state.summary()})",
                    f"remove what it made with si_rmxenvm {name}, then deploy it again")
    if state.update is not None:
        raise Fatal(f"VM '{name}' has an unfinished update (pid {state.update.get('pid', '?')}, step '{state.update_step}')",
                    f"finish it with si_updatexenvm {name} first (or remove the VM with si_rmxenvm {name})")
    rec = state.record
    if not rec.request:
        raise Fatal(f"VM '{name}' was made by si-xen < 0.2 and its record lacks its options",
                    f"give them again: si_mkxenvm {rec.image} --hostname {name} {_said_again(rec)} --force "
                    "(a deploy anew: the VM gets a new identity)")
    return state


def _said_again(rec: VmRecord) -> str:
    """The options an older record knows, as si_mkxenvm takes them."""
    where = f"--lvm {rec.storage_root}" if rec.storage == "lvm" else f"--dir {rec.storage_root or 'DIR'}"
    net = "--dhcp" if rec.dhcp else " ".join(f"--ip {ip}" for ip in rec.ips) + " --netmask MASK --gateway GW"
    return f"--memory {rec.memory}M --type {rec.type} --boot {rec.boot} --mac {rec.mac} {net} {where}"


def running(name: str, choice: str | None = "auto") -> bool:
    ts = toolstack.find(choice or "auto")
    return ts is not None and toolstack.hypervisor_running() and name in ts.domains()


def _same_toolstack(rec: VmRecord, plan: Plan) -> None:
    """A libvirt VM is rebuilt as the same libvirt domain, its definition replaced (deploy._define):
    checked before anything is stopped. A move into or out of libvirt is no rebuild: the old
    domain would stay defined beside (or be missing from) the new registration."""
    was, now = rec.toolstack == "libvirt", plan.activation.toolstack == "libvirt"
    if was != now:
        raise Fatal(f"VM '{rec.name}' is {'' if was else 'not '}libvirt's, and a rebuild keeps its toolstack",
                    f"drop --toolstack, or si_rmxenvm {rec.name}, then si_mkxenvm --toolstack {plan.activation.toolstack}")
    if now and rec.mac and plan.net.mac != rec.mac:  # the domain's uuid is made from the name and MAC
        raise Fatal(f"VM '{rec.name}' is libvirt's, whose domain keeps its uuid (made from its name and MAC "
                    f"{rec.mac}) in a rebuild: --mac {plan.net.mac} would make it another domain",
                    f"drop --mac, or si_rmxenvm {rec.name}, then si_mkxenvm --toolstack libvirt --mac {plan.net.mac}")
    if now:
        virsh = toolstack.require_libvirt()
        uuid = virsh.domuuid(rec.name)
        if uuid not in (None, domain.domain_uuid(plan)):  # a redefinition would fail on it: said before the stop
            raise Fatal(f"libvirt's domain '{rec.name}' has uuid {uuid}, not the one si-xen defined (the admin's since)",
                        f"si_rmxenvm {rec.name} and undefine that domain, then si_mkxenvm again")
        if uuid is not None:
            virsh.refuse_managed_save(rec.name, "a rebuild")


def rebuild_vm(name: str, overrides: dict, image: Image, settings, rep: Reporter, hs: Headstart, guard: Guard,
               keep_old: bool = False, restart: bool = False, timeout: float = 120.0, source: dict | None = None,
               dry_run: bool = False) -> Outcome:
    """si_mkxenvm --rebuild NAME: the VM made again from ``image`` (its record's request, under
    ``overrides``: options said now), keeping its name, MAC, addresses and identity; a running VM
    only with ``restart`` (a clean shutdown, never a destroy), started again after."""
    state_dir, lock_dir = settings.paths["state_dir"], settings.paths["lock_dir"]
    facts = None if dry_run else os.path.join(state_dir, "images")
    ran_before = None
    with journal.lock(lock_dir, name), signals_raise(guard):
        for attempt in range(1, ATTEMPTS + 1):
            state = rebuildable(journal.load(state_dir, name), name, settings, rep) if not dry_run else \
                _checked(journal.load(state_dir, name), name, settings, rep)
            was_running = running(name, state.record.toolstack)
            ran_before = was_running if ran_before is None else ran_before
            if was_running and not restart:
                ts = toolstack.for_messages(state.record.toolstack)
                raise Fatal(f"VM '{name}' is running", f"add --restart, or {ts.shown('shutdown', name)} first")
            o = {**overrides, "hostname": name, "force": True, "dry_run": dry_run,
                 "start": bool(overrides.get("start") or ran_before)}
            req = Request.from_json(state.record.request, o)
            tree, plans, pending = _ahead(req, image, hs.walk if attempt == 1 else None, facts, settings, rep.warn)
            kernel = planner.check_boot(plans[0], image, facts, req.said.memory)
            plans = planner.noted(plans, kernel)
            plan = plans[0]
            _same_toolstack(state.record, plan)
            need = 0
            if plan.storage == "dir" and not plan.clone:  # the old disks stay until the new VM is made
                need = sum(survey.needed_mib(*u) for u in tree.usage([d.mountpoint for d in plan.disks if d.mountpoint]).values())
            backend_for(plan, lock_dir).validate(plan.hostname, list(plan.disks), need, True)
            if dry_run:
                return Outcome(plans, [])
            if attempt == 1:
                rep.open_log(os.path.join(settings.paths["log_dir"], f"{name}.log"))
                rep.say(f"Rebuilding {name}, keeping its identity:\n" + describe(plan) + "\n")
            try:
                rec = rebuild.rebuild(plan, image, kernel, settings, rep, state, keep_old, was_running, timeout, hs,
                                     pending, guard, request=req, source=source)
            except ImageChanged as e:  # put back already: plan again from the image as it is
                if attempt == ATTEMPTS:
                    _start_again(name, state_dir, ran_before, rep)
                    raise Fatal(f"image '{image.name}' changed under each of {ATTEMPTS} rebuilds ({e.problem}); "
                                f"VM '{name}' is as it was", e.fix) from None
                rep.say(f"Not kept: {e.problem}; planning again")
                continue
            except BaseException:
                _start_again(name, state_dir, ran_before, rep)
                raise
            _remember(plan, kernel, facts, image, tree if pending is None else None, rep)
            prune.unused(state_dir, rep.warn)  # after _remember: the generation it left is no image's now
            return Outcome(plans, [rec])
    raise AssertionError("unreachable")


def _start_again(name: str, state_dir: str, ran_before: bool | None, rep: Reporter) -> None:
    """A rebuild put back after its stop: the old VM runs again, as it did before."""
    st = journal.load(state_dir, name)
    if not ran_before or st is None or st.replaces is not None or not st.complete or running(name, st.record.toolstack):
        return
    shown = toolstack.for_messages(st.record.toolstack).start_shown(name, st.record.config)
    try:
        ts = toolstack.require_running(st.record.toolstack or "auto")
        rep.say(f"Starting {name} again as it was ({shown})")
        ts.create(st.record.config, lambda _signum: None, name=name)
    except Exception as e:  # the rebuild's own error is the one to raise
        rep.warn(f"could not start {name} again: {e}; start it with {shown}")


def _checked(state, name, settings, rep):
    """A dry run's checks: as rebuildable, but nothing is rolled back or discarded."""
    if state is not None and state.replaces is not None:
        raise Fatal(f"VM '{name}' has an unfinished rebuild", f"si_mkxenvm --rebuild {name} (without --dry-run) finishes it")
    return rebuildable(state, name, settings, rep)
