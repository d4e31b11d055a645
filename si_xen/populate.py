"""The image tree into the VM's filesystems: fresh (mkfs + copy), or cloned from a base.

A fresh copy preserves owners, modes, hard links, ACLs, xattrs, device nodes and sparse
files, with SystemImager's install-time exclusions. Where the image leaves nothing to
exclude and the VM has one ext3/ext4 filesystem, mke2fs -d writes the tree while making
the filesystem: one pass over the data instead of mkfs, mount and rsync.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

from . import __version__, proc
from .rollback import Undo
from .storage.mount import mkfs, mount_tree, sync_targets, umount

# SystemImager's install-time exclusions (master's list; /dev is kept because old guests
# without devtmpfs need their static nodes).
EXCLUDES = ("lost+found/", "/proc/*", "/sys/*", "/run/*", "/tmp/*", "/var/lib/nfs/rpc_pipefs", "/etc/system-id")
_EMPTY_DIRS = ("proc", "sys", "run", "tmp", "lost+found", "var/lib/nfs/rpc_pipefs")


def copy(image: str, dest: str, progress=None) -> None:
    """rsync -aHAXS --numeric-ids, as SystemImager's autoinstall script does."""
    argv = ["rsync", "-aHAXS", "--numeric-ids", "--info=progress2", "--no-inc-recursive"]
    argv += [f"--exclude={x}" for x in EXCLUDES]
    argv += [image.rstrip("/") + "/", dest.rstrip("/") + "/"]
    proc.stream(argv, progress or (lambda line: None))


def one_pass_ok(image: str, disks) -> bool:
    """mke2fs -d copies everything: only when the exclusions would remove nothing."""
    data = [d for d in disks if d.fs != "swap"]
    if len(data) != 1 or data[0].fs not in ("ext3", "ext4"):
        return False
    for d in _EMPTY_DIRS:
        try:
            if os.listdir(os.path.join(image, d)):
                return False
        except (FileNotFoundError, NotADirectoryError):
            pass
    return not os.path.lexists(os.path.join(image, "etc/system-id"))


def fresh(plan, image, backend, rep, undo, cleanup) -> str:
    """Create, format and fill the VM's own disks; return the mounted guest root."""
    one_pass = one_pass_ok(image.path, plan.disks)
    for d in sorted(plan.disks, key=lambda d: d.vdev):
        label = "swap image" if d.fs == "swap" else f"disk image ({d.mountpoint})"
        with rep.step(f"Creating {label}: {d.target}"):
            backend.create(d, undo)
        if d.fs == "swap":
            with rep.step(f"Creating swap on {d.target}"):
                mkfs(d)
        elif one_pass:
            with rep.step(f"Creating {d.fs} filesystem on {d.target}\nInstallation method: copy (mke2fs -d)\n"
                          f"(Source: {image.path})"):
                mkfs(d, image.path)
        else:
            with rep.step(f"Creating {d.fs} filesystem on {d.target}"):
                mkfs(d)
    root = mount_tree(list(plan.disks), backend, cleanup, plan.hostname)
    if not one_pass:
        with rep.step(f"Installation method: copy\n(Source: {image.path})"):
            copy(image.path, root, rep.progress)
            rep.end_progress()
    return root


def bases_ready(plan, backend) -> bool:
    return all(backend.have_base(backend.base_target(plan.image_name, plan.fingerprint, d))
               for d in plan.disks if d.fs != "swap")


def cloned(plan, image, fingerprint: str, backend, rep, undo, cleanup) -> tuple[str, list[str]]:
    """Clone the image's base disks (building them first if needed); return root, bases."""
    data = [d for d in plan.disks if d.fs != "swap"]
    bases = {d.name: backend.base_target(plan.image_name, fingerprint, d) for d in data}
    with backend.base_lock(plan.image_name):
        if not all(backend.have_base(b) for b in bases.values()):
            _build_bases(plan, image, fingerprint, backend, rep, bases)
    for d in sorted(plan.disks, key=lambda d: d.vdev):
        if d.fs == "swap":
            with rep.step(f"Creating swap image: {d.target}"):
                backend.create(d, undo)
                mkfs(d)
            continue
        with rep.step(f"Cloning disk image ({d.mountpoint}): {d.target}\n(Base: {bases[d.name]})"):
            backend.clone(bases[d.name], d, undo)
    if backend.kind == "file":
        vm_dir = os.path.dirname(data[0].target)
        undo.push(f"remove {vm_dir}", _rmdir_quiet, vm_dir)
    return mount_tree(list(plan.disks), backend, cleanup, plan.hostname), sorted(bases.values())


def _build_bases(plan, image, fingerprint, backend, rep, bases) -> None:
    """The first VM of an image: a full copy into base disks, published atomically."""
    undo, cleanup = Undo(), Undo()
    tmps = [replace(d, target=f"{bases[d.name]}.tmp{os.getpid()}") for d in plan.disks if d.fs != "swap"]
    try:
        rep.say(f"Building base disks of image '{plan.image_name}' (once; later VMs are clones)")
        fresh(replace(plan, disks=tuple(tmps)), image, backend, rep, undo, cleanup)
        if cleanup.pop_all():
            raise OSError("could not unmount the base disks")
        sync_targets(tmps)
        meta = {"image": plan.image_name, "image_path": image.path, "fingerprint": fingerprint,
                "image_time": image.meta.retrieval_time, "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                "version": __version__}
        for t in tmps:
            backend.publish_base(t.target, bases[t.name], dict(meta, disk=t.name, fs=t.fs, size_mib=t.size_mib))
    except BaseException:
        cleanup.pop_all()
        undo.pop_all()
        raise


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


__all__ = ["EXCLUDES", "copy", "fresh", "cloned", "umount"]
