"""Copy-on-write clones: the first VM of an image builds a base disk per filesystem;
later VMs get clones of it (reflinks on XFS and btrfs, LVM thin snapshots) and only their
own fixups are written.

Bases live beside the VMs (reflinks cannot cross filesystems; thin snapshots stay in their
pool), named by image, image fingerprint, filesystem and size, so a changed image or another
size gets a new base. Where a base lives, whether it is complete, how it is published,
cloned and removed: the backend's part (a storage.CloneStorage).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

from . import __version__, proc, storage
from .image import survey
from .journal import all_states
from .locks import exclusive
from .made import Lock
from .plan import Disk, Plan
from .populate import copy_in, make_disks, make_filesystems, one_pass_ok
from .record import VmRecord
from .storage.mount import mount_tree, sync_targets, unmount


def name(image: str, fingerprint: str, disk: Disk) -> str:
    """Image, image fingerprint, disk, filesystem and size: what a clone must match."""
    return f"{image}-{fingerprint}-{disk.name}-{disk.fs}-{disk.size_mib}M"


def targets(plan: Plan, backend: storage.CloneStorage) -> dict[str, str]:
    """Each data disk's base, by disk name."""
    return {d.name: backend.base_target(name(plan.image_name, plan.fingerprint, d)) for d in plan.disks if d.fs != "swap"}


def ready(plan: Plan, backend: storage.Storage) -> bool:
    clones = storage.cloning(backend)
    return all(clones.have_base(b) for b in targets(plan, clones).values())


def ensure(plan: Plan, image, backend: storage.Storage, rep, journal, build: bool = True) -> dict[str, str] | None:
    """The image's base disks, built now if no VM built them yet (one builder at a time);
    None if they are missing and ``build`` is False (the plan's fingerprint is not yet proven)."""
    clones = storage.cloning(backend)
    bases = targets(plan, clones)
    path = clones.base_lock(plan.image_name)
    journal.makedirs(os.path.dirname(path))
    lock = journal.made(Lock(path))
    with exclusive(lock.path):
        if not all(clones.have_base(b) for b in bases.values()):
            if not build:
                return None
            _build(plan, image, clones, rep, journal, bases)
    return bases


def _build(plan: Plan, image, backend: storage.CloneStorage, rep, journal, bases: dict[str, str]) -> None:
    """The first VM of an image: a full copy into temporary disks, published atomically.

    The temporary disks are journaled like the VM's own: a crash leaves nothing that
    si_rmxenvm cannot remove, and once published their temporary names are gone."""
    tmp = replace(plan, disks=tuple(replace(d, target=f"{bases[d.name]}.tmp{os.getpid()}")
                                    for d in plan.disks if d.fs != "swap"))
    rep.say(f"Building base disks of image '{plan.image_name}' (once; later VMs are clones)")
    one_pass = one_pass_ok(image.path, tmp.disks)
    journal.step("base-disks")
    make_disks(tmp, backend, rep, journal)
    journal.step("base-filesystems")
    make_filesystems(tmp, image, rep, one_pass)
    if not one_pass:
        journal.step("base-copy")
        root, mounts = mount_tree(list(tmp.disks), backend, journal, f"base-{plan.hostname}")
        try:
            copy_in(image, root, rep)
        finally:
            unmount(mounts)
    # As a VM's own copy (deploy._walk_again): published only if the image walked after the
    # copy is the one planned from, or the base would be neither, under the old one's name. Its
    # manifest goes with the other image facts, state_dir/images (the journal: state_dir/vms/H.journal).
    facts_dir = os.path.join(os.path.dirname(os.path.dirname(journal.path)), "images")
    walk = proc.Ahead(survey.survey, image.path, facts_dir)
    try:
        journal.step("base-publish")
        sync_targets(list(tmp.disks))
        fresh = walk.result()
    finally:
        walk.close()
    if fresh is None or fresh.fingerprint != plan.fingerprint:
        raise survey.ImageChanged(fresh, survey.COPIED)
    meta = {"image": plan.image_name, "image_path": image.path, "fingerprint": plan.fingerprint,
            "image_time": image.meta.retrieval_time, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "version": __version__}
    for t in tmp.disks:
        backend.publish_base(t.target, bases[t.name], dict(meta, disk=t.name, fs=t.fs, size_mib=t.size_mib))


def prune(rec: VmRecord, state_dir: str, lock_dir: str) -> None:
    """The bases a removed VM (its record ``rec``) was cloned from, when no other VM's record names them."""
    in_use = {b for s in all_states(state_dir) if s.record for b in s.record.bases}
    unused = set(rec.bases) - in_use
    if unused:  # a VM on given disks has no bases, and its storage cannot remove one
        where = storage.cloning(storage.backend(rec.storage, rec.storage_root, rec.thin_pool, lock_dir))
        for base in unused:
            where.remove_base(base)
