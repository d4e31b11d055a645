"""What a deploy makes, one typed thing per resource.

Each thing is journaled before it is made (journal.py) and deletes itself from its journal
entry alone: a deploy's rollback, si_rmxenvm and the recovery after a crash run the same
``delete``. Deletes are idempotent: a thing that was never made, or is already gone, is fine.
``link_autostart`` makes one: a VM's link in /etc/xen/auto. A libvirt VM's definition and
autostart are libvirt's (toolstack/libvirt.py): LibvirtDefinition and LibvirtAutostart undo them.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import asdict, dataclass
from typing import ClassVar

from . import proc, toolstack
from .locks import LockBusy, exclusive

KINDS: dict[str, type[Made]] = {}


class Made:
    kind: ClassVar[str]
    disk: ClassVar[bool] = False  # si_rmxenvm --keep-disks leaves these

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        KINDS[cls.kind] = cls

    def delete(self) -> None:
        raise NotImplementedError

    def to_json(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    @staticmethod
    def from_json(entry: dict) -> Made:
        fields = dict(entry)
        return KINDS[fields.pop("kind")](**fields)

    def __str__(self) -> str:
        return f"{self.kind} {next(iter(asdict(self).values()))}"


@dataclass(frozen=True)
class Directory(Made):
    """A directory we created; removed when empty (a kept disk keeps it)."""

    kind = "dir"
    path: str

    def delete(self) -> None:
        try:
            os.rmdir(self.path)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
                raise


@dataclass(frozen=True)
class File(Made):
    """A file or symlink we wrote: config, autostart link, kernel copy."""

    kind = "file"
    path: str

    def delete(self) -> None:
        if os.path.lexists(self.path):
            os.unlink(self.path)


@dataclass(frozen=True)
class DiskFile(File):
    """A disk image file (sparse, or a reflink of a base)."""

    kind = "disk-file"
    disk = True

    def delete(self) -> None:
        detach_loops(self.path)  # a crash can leave one attached without its mount
        super().delete()


@dataclass(frozen=True)
class LogicalVolume(Made):
    kind = "lv"
    disk = True
    path: str  # /dev/VG/LV

    def delete(self) -> None:
        if lv_exists(self.path):
            proc.run(["lvremove", "-f", self.path])


@dataclass(frozen=True)
class Swap(Made):
    """An update's copy ``new`` put in place of the VM's disk ``target``, whose old self goes to
    ``old``: journaled before ``rename(target, old); rename(new, target)`` (LVs: lvrename).
    The copy was synced before, so a swap half done is finished, never undone:

    - ``finish()`` completes the renames (recovery rolls forward, then records);
    - ``delete()`` (a rollback, si_rmxenvm) leaves ``target`` in place and no spare:
      no rename done yet: the copy goes, the VM keeps its disk (back);
      the disk moved to ``old`` and ``new`` still there: finish, then ``old`` goes (forward);
      both renames done: ``old`` goes (forward);
      ``target`` missing, only ``old`` left: it is moved back.
    """

    kind = "swap"
    target: str
    new: str
    old: str

    def finish(self) -> None:
        if _present(self.target) and _present(self.new) and not _present(self.old):
            _rename(self.target, self.old)
        if not _present(self.target) and _present(self.new):
            _rename(self.new, self.target)
        _sync_dir(self.target)

    def delete(self) -> None:
        if not _present(self.target):
            if _present(self.new):
                _rename(self.new, self.target)
            elif _present(self.old):
                _rename(self.old, self.target)
            _sync_dir(self.target)
        for spare in (self.new, self.old):
            if _present(spare):
                (LogicalVolume if _lv(spare) else DiskFile)(spare).delete()


def _lv(path: str) -> bool:
    return path.startswith("/dev/")


def _present(path: str) -> bool:
    return lv_exists(path) if _lv(path) else os.path.lexists(path)


def _rename(src: str, dst: str) -> None:
    if _lv(src):
        proc.run(["lvrename", src, dst])
    else:
        os.rename(src, dst)


def _sync_dir(path: str) -> None:
    """A rename in a directory survives a power cut once the directory is synced."""
    if _lv(path):
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Aside(Made):
    """A thing of the VM a rebuild replaces, moved out of the new one's way (``path`` renamed to
    ``aside``; LVs: lvrename) and journaled before. ``delete()`` (a rollback, si_rmxenvm) moves it
    back where ``path`` is free (the new thing deleted before it: undo runs newest first), and
    removes it otherwise; ``discard()`` removes it (the rebuild done)."""

    kind = "aside"
    path: str
    aside: str
    is_disk: bool = False  # an old disk: si_rmxenvm --keep-disks leaves it where it is

    @property
    def disk(self) -> bool:  # type: ignore[override]
        return self.is_disk

    def delete(self) -> None:
        if _present(self.aside) and not _present(self.path):
            _rename(self.aside, self.path)
            _sync_dir(self.path)
        else:
            self.discard()

    def discard(self) -> None:
        if _lv(self.aside):
            LogicalVolume(self.aside).delete()
        elif os.path.lexists(self.aside):
            DiskFile(self.aside).delete()

    @staticmethod
    def name_for(path: str) -> str:
        """``path.si-old``; in an autostart dir a hidden name, which xendomains does not start."""
        if _lv(path):
            return f"{path}.si-old"
        d, base = os.path.split(path)
        return os.path.join(d, f".{base}.si-old" if os.path.basename(d) == "auto" else f"{base}.si-old")


@dataclass(frozen=True)
class CarryDir(Made):
    """A rebuild's copy of the old VM's identity (carry.py): removed whole, files first."""

    kind = "carry-dir"
    path: str

    def delete(self) -> None:
        if os.path.isdir(self.path) and not os.path.islink(self.path):
            shutil.rmtree(self.path)


@dataclass(frozen=True)
class Mount(Made):
    """A filesystem of the new VM mounted for populate and fixups."""

    kind = "mount"
    where: str
    source: str

    def delete(self) -> None:
        if os.path.ismount(self.where):
            umount(self.where)


@dataclass(frozen=True)
class Lock(Made):
    """A lock file shared with other deploys (a base's): removed only when no one holds it."""

    kind = "lock"
    path: str

    def delete(self) -> None:
        try:
            with exclusive(self.path, wait=False):
                pass  # releasing removes it
        except (LockBusy, FileNotFoundError):
            pass  # another deploy holds it: it is theirs now


@dataclass(frozen=True)
class Domain(Made):
    """The running domain, once started."""

    kind = "domain"
    name: str
    toolstack: str

    def delete(self) -> None:
        ts = toolstack.find(self.toolstack)
        if ts is not None and toolstack.hypervisor_running():
            ts.destroy(self.name)


@dataclass(frozen=True)
class LibvirtDefinition(Made):
    """The persistent libvirt domain (``virsh define``); deleted with ``virsh undefine``."""

    kind = "libvirt-domain"
    name: str
    uuid: str = ""  # the domain si-xen defined: another of the same name (the admin's) is never undefined

    def delete(self) -> None:
        ts = _virsh(self.name)
        if not self.uuid or ts.domuuid(self.name) in (self.uuid, None):
            ts.undefine(self.name)


@dataclass(frozen=True)
class LibvirtRedefinition(LibvirtDefinition):
    """A rebuild's ``virsh define`` over the domain it replaces (the same name and uuid, so libvirt
    replaces its persistent config): undone by defining the old one again, saved here as libvirt
    held it, with its autostart as it was; never undefined (a failed rebuild keeps the old VM).
    Once the rebuild is recorded it is the VM's definition like any other (:meth:`kept`)."""

    kind = "libvirt-redefinition"
    old_xml: str = ""
    old_autostart: bool = False

    def delete(self) -> None:
        ts = _virsh(self.name)
        if ts.domuuid(self.name) in (self.uuid, None):  # another uuid: the admin's since, theirs
            ts.define_text(self.old_xml)
            ts.autostart(self.name, self.old_autostart)

    def kept(self) -> LibvirtDefinition:
        return LibvirtDefinition(self.name, self.uuid)


@dataclass(frozen=True)
class LibvirtAutostart(Made):
    """libvirt's autostart of the domain (``virsh autostart``), in place of /etc/xen/auto."""

    kind = "libvirt-autostart"
    name: str
    uuid: str = ""  # as LibvirtDefinition's: another domain of the name (the admin's) keeps its autostart

    def delete(self) -> None:
        ts = _virsh(self.name)
        if not self.uuid or ts.domuuid(self.name) == self.uuid:
            ts.autostart(self.name, on=False)


def _virsh(name: str):
    from .toolstack.libvirt import find_virsh

    ts = find_virsh()
    if ts is None:  # uninstalled since: the domain may be defined still, say so (a leftover)
        raise OSError(f"virsh not found: libvirt's domain '{name}' may still be defined")
    return ts


def link_autostart(cfg: str, journal) -> str:
    """xendomains starts what is linked in /etc/xen/auto: the auto/ beside the config dir."""
    auto_dir = os.path.join(os.path.dirname(cfg), "auto")
    journal.makedirs(auto_dir)
    link = os.path.join(auto_dir, os.path.basename(cfg))
    if os.path.lexists(link):
        os.unlink(link)
    journal.made(File(link), os.symlink, cfg, link)
    return link


def lv_exists(path: str) -> bool:
    return proc.run(["lvs", path], ok=(0, 5)).returncode == 0


def umount(where: str) -> None:
    # A process killed a moment ago may still hold the filesystem: give it a second.
    for _ in range(10):
        if proc.run(["umount", where], ok=(0, 32)).returncode == 0:
            return
        time.sleep(0.2)
    proc.run(["umount", where])


def detach_loops(path: str) -> None:
    """Loop devices still backed by ``path`` (mount -o loop's, when we died mid-way)."""
    if not os.path.exists(path):
        return
    out = proc.run(["losetup", "--noheadings", "-O", "NAME", "-j", path], ok=(0, 1)).stdout
    for dev in out.split():
        proc.run(["losetup", "-d", dev], ok=(0, 1))
