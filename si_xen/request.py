"""What the admin asked for, typed: one Request per command, whichever front end built it.

si_mkxenvm builds it from its options over xen.conf over ``config.BUILTIN`` (the one place
defaults live), Ganeti's scripts from the instance's environment. Each field has one
validator, run in the order below, so a bad value is one FATAL naming the option; what
needs the image (disk sizes) or the host (a VM's addresses) is checked by the planner.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace

from . import batch, boot
from .config import BUILTIN
from .errors import Fatal
from .plan import BOOT_MODES, FILESYSTEMS, TYPES, Activation, Disk
from .sizes import parse_mib
from .validate import CLI, Source, check_hostname

LAYOUTS = ("default", "image")
CLOUD_INIT = ("auto", "off")
INITRAMFS = ("auto", "slim", "image")  # boot.choose_initramfs
TOOLSTACKS = ("auto", "xl", "xm", "libvirt")  # auto: xl, else xm; libvirt only by name (toolstack/__init__.py)
FLAGS = ("dhcp", "noswap", "start", "console", "autostart", "force", "full_copy", "dry_run")
_AS_OPTIONS = ("image", "memory", "maxmem", "vcpus", "fs", "type", "boot", "layout", "size", "size_given", "swap",
               "noswap", "dhcp", "netmask", "gateway", "broadcast", "mac", "bridge", "output", "extension", "kernel",
               "initrd", "cloud_init", "user_data", "initramfs")  # fields whose option has their name and takes their value


@dataclass(frozen=True)
class Storage:
    """Where the disks go: ``dir`` (sparse files under root), ``lvm`` (LVs in the VG root,
    thin in ``pool``) or ``given`` (disks their owner made: Ganeti's, targets set)."""

    kind: str
    root: str = ""
    pool: str | None = None
    full_copy: bool = False
    disks: tuple[Disk, ...] = ()


@dataclass(frozen=True)
class Said:
    """How the front end names its settings in a FATAL: si_mkxenvm's options, or Ganeti's."""

    net: Source = CLI
    memory: tuple[str, str] = ("--memory", "use --memory {}M or more")


@dataclass(frozen=True)
class Request:
    hostnames: tuple[str, ...]
    image: str = ""
    memory: int = parse_mib(BUILTIN["memory"])
    maxmem: int | None = None
    vcpus: int = int(BUILTIN["vcpus"])
    fs: str = BUILTIN["fs"]
    type: str = BUILTIN["type"]
    boot: str = BUILTIN["boot"]
    layout: str = BUILTIN["layout"]
    size: int = parse_mib(BUILTIN["size"])
    size_given: bool = False  # --size said: it overrides the golden client's / in --layout image
    swap: int = parse_mib(BUILTIN["swap"])  # 0: none
    noswap: bool = False
    dhcp: bool = False
    ips: tuple[str, ...] = ()  # the first VM's; a batch's next VMs take the next addresses
    netmask: str = ""
    gateway: str = ""
    broadcast: str = ""
    nameservers: str = ""
    mac: str = ""  # "" = stable per hostname
    bridge: str = BUILTIN["bridge"]
    storage: Storage = field(default_factory=lambda: Storage("dir"))
    output: str = BUILTIN["output"]
    extension: str = BUILTIN["extension"]
    kernel: str | None = None
    initrd: str | None = None
    activation: Activation = field(default_factory=Activation)
    force: bool = False
    dry_run: bool = False
    fixups_only: tuple[str, ...] = ()
    fixups_skip: tuple[str, ...] = ()
    initramfs: str = BUILTIN["initramfs"]
    cloud_init: str = BUILTIN["cloud_init"]
    user_data: str = ""  # --user-data FILE (recorded: a rebuild reads it again)
    user_data_text: str = ""  # its document, checked (never recorded: it may hold secrets)
    said: Said = field(default_factory=Said)

    @classmethod
    def from_options(cls, o: Mapping) -> Request:
        """``o``: option name -> value, CLI over xen.conf; what is missing takes config.BUILTIN's."""
        o = {**BUILTIN, **{k: v for k, v in o.items() if v is not None}}
        flag = {k: _flag(o.get(k)) for k in FLAGS}
        memory, maxmem = _memory(o["memory"], o.get("maxmem"))
        vtype, bmode = _choice(o["type"], TYPES, "--type"), _choice(o["boot"], BOOT_MODES, "--boot")
        if vtype == "pvh" and bmode == "pygrub":
            raise Fatal("pygrub cannot boot a PVH guest here", "use --boot direct or --boot pvgrub2 with --type pvh")
        ips = o.get("ip") or ()
        return cls(
            hostnames=_hostnames(o.get("hostname") or ""), image=o.get("image") or "", memory=memory, maxmem=maxmem,
            vcpus=_vcpus(o["vcpus"]), fs=_choice(o["fs"], FILESYSTEMS, "--fs"), type=vtype, boot=bmode,
            layout=_choice(o["layout"], LAYOUTS, "--layout"), size=parse_mib(o["size"], "--size"),
            size_given=bool(o.get("size_given")), swap=_swap(o["swap"]), noswap=flag["noswap"], dhcp=flag["dhcp"],
            ips=tuple(ips.split() if isinstance(ips, str) else ips), netmask=o.get("netmask") or "",
            gateway=o.get("gateway") or "", broadcast=o.get("broadcast") or "",
            nameservers=o.get("nameserver") or "", mac=o.get("mac") or "", bridge=o.get("bridge") or BUILTIN["bridge"],
            storage=_storage(o.get("dir"), o.get("lvm"), o.get("thin_pool"), flag["full_copy"]),
            output=_output(o["output"]), extension=o["extension"], **_kernel(o.get("kernel"), o.get("initrd")),
            activation=Activation(_choice(o["toolstack"], TOOLSTACKS, "--toolstack"), flag["start"] or flag["console"], flag["console"], flag["autostart"]),
            force=flag["force"], dry_run=flag["dry_run"],
            fixups_only=_names(o.get("fixups")), fixups_skip=_names(o.get("skip_fixups")),
            initramfs=_initramfs(o["initramfs"], o.get("kernel")),
            cloud_init=_choice(o["cloud_init"], CLOUD_INIT, "--cloud-init"), **_user_data(o.get("user_data")),
        )

    def to_json(self) -> dict:
        """As JSON data, for the VM's record: all the admin asked, minus how the front end
        names its settings and this run's --force and --dry-run."""
        d = asdict(self)
        for k in ("said", "force", "dry_run", "user_data_text"):
            del d[k]
        return json.loads(json.dumps(d))  # tuples as lists, as the journal reads them back

    @classmethod
    def from_json(cls, d: Mapping, overrides: Mapping | None = None) -> Request:
        """A recorded request, validated again as si_mkxenvm's options are (a value no longer
        valid, a --kernel gone: one FATAL naming the option); a key it lacks takes its default.
        ``overrides``: options said now (si_mkxenvm --rebuild), over the recorded ones."""
        st, given = d.get("storage") or {}, (d.get("storage") or {}).get("kind") == "given"
        root = st.get("root") or None
        o = {k: d.get(k) for k in _AS_OPTIONS} | dict(d.get("activation") or {}) | {
            "hostname": ",".join(d.get("hostnames") or ()), "ip": tuple(d.get("ips") or ()),
            "nameserver": d.get("nameservers"), "fixups": ",".join(d.get("fixups_only") or ()),
            "skip_fixups": ",".join(d.get("fixups_skip") or ()), "thin_pool": st.get("pool"),
            "full_copy": st.get("full_copy"), "lvm": root if st.get("kind") == "lvm" else None,
            "dir": "/" if given else root if st.get("kind") == "dir" else None}
        req = cls.from_options(o | dict(overrides or {}))
        if given:  # disks their owner made (Ganeti's), checked by the planner
            req = replace(req, storage=Storage("given", st.get("root") or "",
                                               disks=tuple(Disk(**x) for x in st.get("disks") or ())))
        return req

    def for_host(self, index: int) -> tuple[str, tuple[str, ...], str]:
        """The index-th VM's hostname, addresses (consecutive after the first VM's) and MAC
        (a given --mac is one VM's: a batch's VMs get their stable ones)."""
        mac = self.mac if len(self.hostnames) == 1 else ""
        return self.hostnames[index], tuple(batch.shifted(list(self.ips), index)), mac


def _flag(value) -> bool:
    return str(value or "").lower() in ("1", "true", "yes", "on")


def _choice(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise Fatal(f"invalid {what} '{value}'", f"use one of: {', '.join(allowed)}")
    return value


def _hostnames(spec: str) -> tuple[str, ...]:
    if not spec:
        raise Fatal("no --hostname given", "name the VM with --hostname NAME")
    return tuple(check_hostname(h) for h in batch.expand(spec))


def _memory(memory: str, maxmem: str | None) -> tuple[int, int | None]:
    mem = parse_mib(memory, "--memory")
    top = parse_mib(maxmem, "--maxmem") if maxmem else None
    if mem < 64:
        raise Fatal(f"--memory {mem}M is too small", "give a Xen guest at least 64M")
    if top is not None and top < mem:
        raise Fatal(f"--maxmem {top}M is less than --memory {mem}M", "make --maxmem at least --memory")
    return mem, top


def _vcpus(value) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if not 1 <= n <= 128:
        raise Fatal(f"invalid --vcpus '{value}'", "give a whole number from 1 to 128")
    return n


def _swap(value: str) -> int:
    return 0 if str(value) in ("0", "") else parse_mib(value, "--swap")


def _storage(directory: str | None, vg: str | None, pool: str | None, full_copy: bool) -> Storage:
    if directory and vg:
        raise Fatal("both --dir and --lvm given", "choose one place for the disks")
    if not directory and not vg:
        raise Fatal("no storage given", "add --dir DIR (image files) or --lvm VG (logical volumes)")
    if pool and not vg:
        raise Fatal("--thin-pool given without --lvm", "name the volume group with --lvm VG")
    if vg:
        return Storage("lvm", vg, pool or None, full_copy)
    return Storage("dir", os.path.abspath(directory), None, full_copy)


def _output(directory: str) -> str:
    if not os.path.isdir(directory):
        raise Fatal(f"config directory {directory} does not exist", "install the Xen tools or give --output DIR")
    return directory


def _kernel(kernel: str | None, initrd: str | None) -> dict:
    boot.check_supplied(kernel or None, initrd or None)
    return {"kernel": kernel or None, "initrd": initrd or None}


def _initramfs(mode: str, kernel: str | None) -> str:
    mode = _choice(mode, INITRAMFS, "--initramfs")
    if kernel and mode == "slim":
        raise Fatal("--initramfs slim makes a Xen-sized initramfs from the image's, and --kernel boots dom0's files",
                    "drop --initramfs slim (the --initrd given boots as it is), or --kernel/--initrd")
    return mode


def _user_data(path: str | None) -> dict:
    if not path:
        return {}
    from .userdata import read_user_data

    return {"user_data": os.path.abspath(path), "user_data_text": read_user_data(path)}


def _names(value) -> tuple[str, ...]:
    return tuple(x for x in (value or "").split(",") if x)
