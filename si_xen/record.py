"""What was made: one VmRecord per VM, stored by its journal and read by every command.

The JSON keys are those si-xen has always written, so a journal of any earlier version reads
back (a key it lacks takes the field's default; a key this version does not know is kept in
``extra`` and written again). A deploy's journal begins with the record of the VM as planned
(``begun``); it is complete once the record of the VM as made (``built``) follows.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields, replace

from . import __version__
from .sizes import human


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class DiskRecord:
    vdev: str
    mountpoint: str = ""  # "" for swap
    fs: str = ""
    size: str = ""  # as the admin reads it: 4G, 256M
    target: str = ""
    options: str = ""  # its fstab options, as planned ("" in a record made before si-xen kept them)


@dataclass(frozen=True)
class VmRecord:
    name: str
    image: str = "?"
    image_path: str = ""
    image_time: str | None = None  # the image's IMAGE_RETRIEVAL_TIME
    image_fingerprint: str = ""  # of the tree copied ("" before si-xen recorded it)
    guest: str = ""
    created: str = ""
    config: str = ""
    autostart: str | None = None  # the link in /etc/xen/auto, if made
    toolstack: str = ""
    storage: str = ""  # dir | lvm | given
    storage_root: str = ""
    thin_pool: str | None = None
    disks: tuple[DiskRecord, ...] = ()
    bases: tuple[str, ...] = ()  # base disks the VM's disks are clones of
    boot: str = "-"
    type: str = "pv"
    mac: str = ""
    ips: tuple[str, ...] = ()  # () = DHCP
    memory: int = 0
    initramfs: str = "-"  # what boots: slim (Xen-sized, made from the image's), image, given (--initrd), - none
    ssh_fingerprints: tuple[str, ...] = ()
    version: str = ""
    seconds: float = 0.0
    complete: bool = True
    # an unfinished deploy: who ran it, and how far it got
    pid: int | None = None
    started: str = ""
    step: str = ""
    made: tuple[str, ...] = ()
    # what an update, a drift report or a rebuild needs (empty: made by si-xen < 0.2)
    request: dict = field(default_factory=dict)  # the VM's Request (Request.to_json)
    source: dict = field(default_factory=dict)  # server, ssh_user, overrides: where the image came from
    owned: dict[str, tuple[str, ...]] = field(default_factory=dict)  # fixup (or "boot") -> guest paths it wrote
    owned_facts: dict[str, list | None] = field(default_factory=dict)  # path -> mode uid gid size mtime_ns; None: absent
    updated: str = ""  # when si_updatexenvm last brought it to its image
    updates: tuple[dict, ...] = ()  # the last updates: at, from, to, image_time, fetched, deleted, fixups, mode, seconds
    rebuilt: str = ""  # when si_mkxenvm --rebuild last made it again, keeping its identity
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def dhcp(self) -> bool:
        return not self.ips

    @classmethod
    def begun(cls, plan) -> VmRecord:
        """The VM a deploy begins to make (its journal's first line)."""
        return cls(plan.hostname, plan.image_name, config=plan.cfg_path, storage=plan.storage,
                   storage_root=plan.storage_root, version=__version__, complete=False, pid=os.getpid(),
                   started=stamp())

    @classmethod
    def built(cls, plan, image, autostart: str | None, fingerprints: list[str], bases, seconds: float,
              **recorded) -> VmRecord:
        """The VM as made; ``recorded``: its request, source, owned and owned_facts."""
        return cls(
            plan.hostname, plan.image_name, image_path=plan.image_path, image_time=image.meta.retrieval_time,
            image_fingerprint=plan.fingerprint, guest=image.os.pretty, created=stamp(), config=plan.cfg_path,
            autostart=autostart, toolstack=plan.activation.toolstack, storage=plan.storage, storage_root=plan.storage_root,
            thin_pool=plan.thin_pool, disks=tuple(DiskRecord(d.vdev, d.mountpoint, d.fs, human(d.size_mib), d.target,
                                                             d.options if d.mountpoint else "") for d in plan.disks),
            bases=tuple(sorted(bases)), boot=plan.boot, type=plan.type, mac=plan.net.mac, ips=plan.net.ips,
            memory=plan.memory, ssh_fingerprints=tuple(fingerprints), version=__version__, seconds=round(seconds, 2),
            **recorded)

    def unfinished(self, step: str, made: list[str]) -> VmRecord:
        """An unfinished deploy as listed: where it stopped and what it made (no disks yet to show)."""
        return replace(self, complete=False, step=step, made=tuple(made), disks=(), boot="-")

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        d["disks"] = [{k: v for k, v in vars(x).items() if k != "options" or v} for x in self.disks]  # as before: no ""
        d["ips"] = list(self.ips) or ["dhcp"]
        for k in ("bases", "ssh_fingerprints", "made", "updates"):
            d[k] = list(d[k])
        d["owned"] = {k: list(v) for k, v in self.owned.items()}
        return {**self.extra, **d}

    @classmethod
    def from_json(cls, d: dict) -> VmRecord:
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        kw["disks"] = tuple(DiskRecord(**x) for x in d.get("disks") or ())
        kw["ips"] = tuple(ip for ip in d.get("ips") or () if ip != "dhcp")
        for k in ("bases", "ssh_fingerprints", "made", "updates"):
            kw[k] = tuple(d.get(k) or ())
        kw["owned"] = {k: tuple(v) for k, v in (d.get("owned") or {}).items()}
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})
