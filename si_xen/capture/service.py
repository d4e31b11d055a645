"""si_getxenimage's pipeline: a VM (its journal's record) or a foreign disk (fromdisk.py) captured
into a SystemImager image, which is either whole in place or not there at all.

Every check that can refuse runs before anything is written (the VM known and complete, not
running unless --snapshot and its storage can snapshot, the image absent unless --force/--update);
the VM's lock is held while its disks are read (no update or rebuild meanwhile), and an image lock
keeps two captures of one image apart. The VM is only read.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass, field

from .. import journal, locks, proc
from ..errors import Fatal
from ..excludes import Patterns
from ..guestfs import Guest
from ..image import store
from ..image.metadata import LAYOUT_FILES, META_DIR
from ..rollback import signals_raise
from . import copy, image, reverse
from .identity import strip_identity


@dataclass(frozen=True)
class Request:
    image: str  # the image's name
    vm: str | None = None  # the VM, or
    from_disk: str | None = None  # another hypervisor's disk image file
    keep_xen: bool = False  # a Xen-ready image: the Xen-isms kept, the identity removed all the same
    snapshot: bool = False  # a running VM read from a copy-on-write snapshot of its disks
    force: bool = False  # an existing image replaced
    update: bool = False  # an existing image refreshed (unchanged files linked, not copied)


@dataclass(frozen=True)
class CaptureResult:
    image: str
    path: str
    stub: str
    entries: int
    bytes: int
    written: int
    seconds: float
    excluded: list[str] = field(default_factory=list)  # the rsync patterns
    exclude_source: str = ""
    identity: list[str] = field(default_factory=list)  # guest paths removed or emptied
    not_reversed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    served: bool = False  # si_mkrsyncd_conf ran: the site's rsync daemon serves the image


def _vm_state(state_dir: str, name: str):
    st = journal.load(state_dir, name)
    if st is None:
        raise Fatal(f"no VM '{name}' made by si_mkxenvm", "si_lsxenvm lists the VMs")
    if getattr(st, "replaces", None) or st.update:
        raise Fatal(f"VM '{name}' has an unfinished {'rebuild' if st.replaces else 'update'} ({st.summary()})",
                    f"finish it first (si_mkxenvm --rebuild {name} or si_updatexenvm {name})")
    if not st.complete or st.record is None:
        raise Fatal(f"VM '{name}' is an unfinished deploy ({st.summary()})", f"si_rmxenvm {name} removes it")
    return st


def _running(name: str) -> bool:
    from .. import toolstack

    ts = toolstack.find()
    return ts is not None and toolstack.hypervisor_running() and name in ts.domains()


def _copy_failed(e: proc.ProcError, target: str) -> Fatal:
    text = e.result.stderr or ""
    where = os.path.dirname(target)
    if "No space left on device" in text or "(28)" in text:
        return Fatal(f"no room for the image in {where} (the copy ran out of space)",
                     "free space there, or set DEFAULT_IMAGE_DIR in systemimager.conf to a filesystem with room")
    lines = [ln for ln in text.splitlines() if ln.startswith(("rsync", "mount", "si_xen", "Fatal", "OSError"))]
    return Fatal(f"could not copy the filesystems: {(lines or text.strip().splitlines() or ['?'])[-1]}",
                 "see the log; the VM was not changed")


def capture(req: Request, settings, say) -> CaptureResult:
    """Run the pipeline (see the module's docstring); SIGINT, SIGTERM and SIGHUP undo it (nothing
    staged, mounted or attached is left) and end the copy's child with it."""
    with signals_raise():
        return _capture(req, settings, say)


def _capture(req: Request, settings, say) -> CaptureResult:
    t0 = time.monotonic()
    if not store._NAME_RE.match(req.image) or req.image in store.NOT_IMAGES:
        raise Fatal(f"invalid image name '{req.image}'", "use letters, digits, '.', '_', '+' and '-'")
    cfg = store.store_config()
    target = image.target_path(cfg, req.image)
    if req.force and req.update:
        raise Fatal("--force and --update contradict each other", "give one of them")
    _check_target(req, target)
    paths = settings.paths
    os.makedirs(paths["lock_dir"], exist_ok=True)
    if req.from_disk:
        from . import fromdisk

        if not os.path.isfile(req.from_disk):
            raise Fatal(f"no disk image file {req.from_disk}", "give the path of a raw, qcow2, vmdk, vhd or vhdx file")
        with _image_lock(paths["lock_dir"], req.image):
            return _from_disk(fromdisk, req, cfg, target, say, t0)
    st = _vm_state(paths["state_dir"], req.vm)
    with journal.lock(paths["lock_dir"], req.vm), _image_lock(paths["lock_dir"], req.image):
        st = _vm_state(paths["state_dir"], req.vm)  # under the lock: no other si_* command now
        rec = st.record
        mode = _read_mode(req, rec, say)

        def read(stage, excludes):
            return _copy(rec, mode, stage, excludes, target, say, paths["lock_dir"], req)

        def undo(stage, excluded):
            if req.keep_xen:
                return []
            return reverse.reverse(stage, rec, os.path.join(paths["state_dir"], "images"), say, excluded=excluded)

        return _build(req, cfg, target, read, undo, rec.disks, rec.name, say, t0)


def _check_target(req: Request, target: str) -> None:
    if os.path.lexists(target) and not (req.force or req.update):
        raise Fatal(f"image '{req.image}' exists at {target}", "add --force to replace it, or --update to refresh it")
    if req.update and not os.path.isdir(os.path.join(target, "etc")):
        raise Fatal(f"image '{req.image}' is not there to update ({target})", "drop --update")


def _read_mode(req: Request, rec, say) -> str:
    """How the VM's disks are read (vmread.read_mode): a running VM only with --snapshot, from
    private copies; a stopped one as it is, or, if its journals hold changes (it was destroyed,
    not shut down), from private copies where they are replayed, never stale."""
    from .. import toolstack, vmread

    ts = toolstack.for_messages(rec.toolstack)  # the admin's commands, for the fixes
    running = _running(req.vm)
    if running and not req.snapshot:
        raise Fatal(f"VM '{req.vm}' is running", f"add --snapshot, or {ts.shown('shutdown', req.vm)} first")
    mode = vmread.read_mode(rec, running)
    if mode == "live" and running:
        raise Fatal(f"VM '{req.vm}' is running and its storage cannot snapshot its disks",
                    f"shut it down first ({rec.storage} storage: a snapshot needs XFS/btrfs reflinks or an LVM thin pool)")
    if not running and mode != "offline":
        dirty = ", ".join(vmread.unclean(rec))
        start, stop = ts.start_shown(req.vm, rec.config), ts.stop_shown(req.vm)
        if mode == "live":
            raise Fatal(f"VM '{req.vm}' was not shut down cleanly: the journal of its {dirty} holds changes "
                        "a read-only capture would miss",
                        f"start it and shut it down cleanly ({start}, then {stop}), then capture again")
        say(f"VM '{req.vm}' was not shut down cleanly ({dirty}): reading "
            f"{'reflinked copies' if mode == 'copy' else 'thin snapshots'} of its disks, their journals replayed")
    return mode


def _from_disk(fromdisk, req: Request, cfg, target: str, say, t0: float) -> CaptureResult:
    """Another hypervisor's disk (fromdisk.attached: loop devices, its root found from its fstab),
    copied as a VM's is; nothing to reverse (si-xen made none of it), the identity removed."""
    from ..record import DiskRecord
    from ..storage.mount import RO_OPTS

    work = image.work_dir(target)
    try:
        with fromdisk.attached(req.from_disk, work, say) as foreign:
            disks = [DiskRecord("", mp or "", fs, f"{_size_mib(dev)}M", dev) for dev, fs, mp in foreign.disks]
            # the layout: the disk's own partitions by number, swap and unread ones (an ESP) included
            layout = [DiskRecord(f"xvda{n}", mp, fs, f"{mib}M", "") for n, fs, mp, mib in foreign.layout]

            def read(stage, excludes):
                return copy.copy_tree([(d.target, d.fs, d.mountpoint) for d in disks],
                                      {"storage": "given", "root": "", "pool": None, "lock_dir": ""}, stage, excludes,
                                      say, name=req.image, replay=list(foreign.replay),
                                      link_dest=target if req.update else None)

            r = _build(req, cfg, target, read, lambda stage, excluded: [], layout, os.path.abspath(req.from_disk), say, t0,
                       label=foreign.label)
            unread = [f"WARNING: {d.mountpoint} ({d.fs}) was not read: si-xen mounts {', '.join(RO_OPTS)}"
                      for d in disks if d.fs != "swap" and d.fs not in RO_OPTS]
            return CaptureResult(**{**r.__dict__, "notes": [*foreign.notes, *unread, *r.notes]})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _size_mib(dev: str) -> int:
    fd = os.open(dev, os.O_RDONLY)
    try:
        return max(1, os.lseek(fd, 0, os.SEEK_END) >> 20)
    finally:
        os.close(fd)


def _build(req: Request, cfg, target: str, read, undo, disks, origin: str, say, t0: float,
           label: str = "msdos") -> CaptureResult:
    """The staging image filled by ``read`` (-> copy.Copied), reversed by ``undo`` (-> what was not),
    the identity removed, SystemImager's metadata written; published whole, else removed."""
    from .. import populate

    image.clear_stale(target, say)
    _check_target(req, target)  # again: a killed capture's old image may just have been put back
    excludes, used = image.getimage_excludes(cfg)
    excludes = [*populate.EXCLUDES, *excludes]
    left_out = Patterns(excludes)
    stage = image.staging(target)
    try:
        copied = read(stage, excludes)
        # what the copy left out on purpose is not "removed in the VM" to the reversal
        not_reversed = undo(stage, lambda p: left_out.matches(p, Guest(stage).isdir(p)))
        identity = strip_identity(stage)
        layouts = _layouts(req, stage, disks, copied.fstab, origin, label)
        server_layout = layouts.get("disks-layout.xml") or next(iter(layouts.values()), None) or _tree_layout(stage)
        image.write_metadata(stage, origin, layouts)
        image.publish(stage, target, replace=req.force or req.update)
    except proc.ProcError as e:
        shutil.rmtree(stage, ignore_errors=True)
        raise _copy_failed(e, target) from None
    except OSError as e:
        shutil.rmtree(stage, ignore_errors=True)
        if e.errno == errno.ENOSPC:
            raise Fatal(f"no room for the image in {os.path.dirname(target)}",
                        "free space there, or set DEFAULT_IMAGE_DIR in systemimager.conf elsewhere") from None
        raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    stub = image.write_stub(cfg, req.image, target)
    served = _mkrsyncd_conf(req.image, say)
    notes = [f"WARNING: {m} is not a directory in the tree's /: its filesystem was not read" for m in copied.skipped]
    notes += image.layout_notes(layouts)
    server = image.write_server_layout(cfg, req.image, server_layout) if server_layout else None
    if server:
        notes.append(f"layout copied to {server}")
    return CaptureResult(req.image, target, stub, copied.entries, copied.bytes, copied.written,
                         round(time.monotonic() - t0, 2), copied.excluded, used, identity, not_reversed, notes, served)


def _mkrsyncd_conf(name: str, say) -> bool:
    """SystemImager's si_mkrsyncd_conf, as si_getimage runs it after writing a stub: rsyncd.conf
    made again from the stubs, so the site's rsync daemon serves the new image. Where SystemImager's
    server is not installed, the summary says to run it; a failure is a warning (the image is made)."""
    tool = shutil.which("si_mkrsyncd_conf")
    if tool is None:
        return False
    try:
        proc.run([tool])
    except (proc.ProcError, OSError) as e:
        say(f"WARNING: si_mkrsyncd_conf failed ({e}): the rsync daemon does not serve '{name}' yet; run it again")
        return False
    return True


def _layouts(req: Request, stage: str, disks, vm_fstab: str, origin: str, label: str = "msdos") -> dict[str, str]:
    """The layout files to write. For physical machines (V2P) the golden client's own, which the
    copy brought and the reversal left, stay as they are: SystemImager partitions from them and
    writes fstab from them, so they must say what the restored fstab and bootloader say. Else
    (--keep-xen: the VM's disks and Xen names; a tree without any) made from the disks and the
    fstab: the VM's for --keep-xen, the tree's as reversed otherwise."""
    have = [n for n in LAYOUT_FILES if Guest(stage).exists(f"{META_DIR}/{n}")]
    if have and not req.keep_xen:
        return {}
    fstab = vm_fstab if req.keep_xen else (Guest(stage).read_text("etc/fstab") or "")
    return {n: image.layout_xml(disks, fstab, origin, req.keep_xen, header=n == "autoinstallscript.conf", label=label)
            for n in image.layout_files(stage)}


def _tree_layout(stage: str) -> str | None:
    g = Guest(stage)
    return next((t for n in LAYOUT_FILES if (t := g.read_text(f"{META_DIR}/{n}")) is not None), None)


def _image_lock(lock_dir: str, name: str):
    from contextlib import contextmanager

    @contextmanager
    def held():
        path = os.path.join(lock_dir, f"image-{name}.capture.lock")
        try:
            with locks.exclusive(path, wait=False):
                yield
        except locks.LockBusy as e:
            raise Fatal(f"another si_getxenimage (pid {e.pid}) is capturing image '{name}'", "wait for it to finish") from None
    return held()


def _copy(rec, mode: str, stage: str, excludes: list[str], target: str, say, lock_dir: str, req) -> copy.Copied:
    from .. import vmread

    snaps = vmread.snapshots(rec) if mode == "snapshot" else {}
    try:
        return copy.copy_tree([(snaps.get(d.target, d.target), d.fs, d.mountpoint) for d in rec.disks],
                              {"storage": rec.storage, "root": rec.storage_root, "pool": rec.thin_pool, "lock_dir": lock_dir},
                              stage, excludes, say, name=rec.name, copy_disks=mode == "copy", replay=mode == "snapshot",
                              link_dest=target if req.update else None)
    finally:
        vmread.drop_snapshots(snaps)
