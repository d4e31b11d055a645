"""The SystemImager side of a capture: where the image goes, its staging dir, the metadata
si_getimage and si_prepareclient would have left in it, and its publication.

An image is never half-written: it is built in ``IMAGE_DIR/.IMAGE.si-xen-new-PID`` and renamed into
place whole; an existing one (``--force``, ``--update``) is swapped with it in one renameat2
RENAME_EXCHANGE, then removed. A capture killed on the way leaves a staging dir that the next one
removes (``clear_stale``); one killed between the swap and the removal leaves the old image aside,
removed the same way. Formats: ../shared/reference/systemimager.md §1.3 (stub), §2 (metadata), §2.1
(autoinstallscript.conf), §2.2 (disks-layout.xml), §4.1 (getimage.exclude).
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import shutil
import time
from xml.sax.saxutils import escape

from .. import atomic, locks
from ..errors import Fatal
from ..excludes import _fstab_field
from ..guestfs import Guest, GuestPathError
from ..image.metadata import DISK_FS, LAYOUT_FILES, META_DIR
from ..image.store import StoreConfig, stub_path
from ..record import DiskRecord
from ..sizes import parse_mib
from .fromdisk_probe import BIOS_BOOT

# SystemImager's getimage.exclude as master ships it (systemimager.md §4.1), used when the server has none.
GETIMAGE_EXCLUDE = """\
/etc/ssh/ssh_host_*
/etc/hostname
/selinux/*
/lib/klibc/events/*
/media/*
+ /var/lib/nfs/statd/sm
+ /var/lib/nfs/statd/sm.bak
/var/lib/nfs/state
/var/lib/nfs/*tab
/var/lib/nfs/*/*
/var/lib/nfs/*/*/*
/etc/lvm/.cache
/etc/lvm/backup/*
/etc/lvm/archive/*
/etc/iftab
/etc/udev/rules.d/70-persistent-net.rules
/etc/udev/rules.d/75-persistent-net-generator.rules
/etc/udev/rules.d/z25_persistent-net.rules
/etc/udev/rules.d/z45_persistent-net-generator.rules
/etc/blkid/blkid.tab
/etc/blkid.tab
"""
NEW, OLD, WORK = "si-xen-new", "si-xen-old", "si-xen-work"  # staging, an old image swapped out, --from-disk's raw copy
AIS_HEADER = """<!--
  autoinstallscript.conf
  vi:set filetype=xml:

  This file contains partition information about the disks on your golden
  client.  It is stored here in a generic format that is used by your
  SystemImager server to create an autoinstall script for cloning this
  system.

  Written by si_getxenimage from the Xen VM {vm}'s disks and /etc/fstab.
-->

"""


def getimage_excludes(cfg: StoreConfig) -> tuple[list[str], str]:
    """The rsync patterns of the server's getimage.exclude (beside its systemimager.conf), else the
    shipped list; and which one was used, for the summary."""
    path = os.path.join(os.path.dirname(cfg.source), "getimage.exclude") if "/" in cfg.source else ""
    text, used = GETIMAGE_EXCLUDE, "SystemImager's default getimage.exclude"
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            text, used = f.read(), path
    return [s.strip() for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")], used


def target_path(cfg: StoreConfig, name: str) -> str:
    """Where image ``name`` lives: its rsync stub's path when it has one, else IMAGE_DIR/NAME."""
    return stub_path(cfg, name) or os.path.join(cfg.images_dir, name)


def _aside(target: str, kind: str, pid: int | None = None) -> str:
    d, n = os.path.split(target.rstrip("/"))
    return os.path.join(d, f".{n}.{kind}-{pid if pid is not None else os.getpid()}")


def clear_stale(target: str, say) -> None:
    """What a killed capture of this image left: its staging dir removed; an old image it had swapped
    out removed, or moved back if the image is missing (a kill between the renames of a filesystem
    without RENAME_EXCHANGE)."""
    for kind in (OLD, NEW, WORK):
        for p in sorted(glob.glob(_aside(target, kind, 0)[:-1] + "*")):
            pid = p.rsplit("-", 1)[-1]
            if not pid.isdigit() or locks.pid_alive(int(pid)):
                continue
            if kind == OLD and not os.path.lexists(target):
                os.rename(p, target)
                say(f"Put back {target}, set aside by a capture that was killed")
                continue
            say(f"Removing {p}, left by a capture that was killed")
            shutil.rmtree(p)


def work_dir(target: str) -> str:
    """Where --from-disk's raw conversion of a disk goes: beside the image (the room it needs is
    the image filesystem's), removed at the end, or by the next capture if this one is killed."""
    path = _aside(target, WORK)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkdir(path, 0o700)
    return path


def staging(target: str) -> str:
    path = _aside(target, NEW)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkdir(path, 0o755)
    return path


# -- metadata -----------------------------------------------------------------------------
def _fstab_lines(fstab: str) -> list[list[str]]:
    out = []
    for line in fstab.splitlines():
        f = line.split()
        if len(f) >= 3 and not f[0].startswith("#"):
            out.append([_fstab_field(x) for x in f[:6]])
    return out


# A BIOS boot partition in a layout's disks (DiskRecord.fs; no filesystem): grub-pc on a gpt disk embeds its
# core.img there (GPT type ef02), there being no gap after the MBR to take it as on msdos; without one,
# grub-install refuses (blocklists only with --force, which SystemImager 5 uses: unreliable).
BIOS_BOOT_MIB = 1
# SystemImager 4.x runs ``parted set N FLAG on`` for each flag of autoinstallscript.conf (Server.pm), and
# si_prepareclient writes parted's own flag names: bios_grub is its word. SystemImager 5's disks-layout.xsd
# allows only root, boot, hidden, raid, lvm, lba, swap, legacy_boot and esp (and a 1-2 digit msdos id), and its
# installer refuses a layout the xsd rejects: there the partition is made, untyped, and the summary says so.
UNTYPED = ("BIOS boot partition for grub-pc: SystemImager 5's disks-layout.xsd has no flag for it; give it "
           "GPT type ef02 (sgdisk -t {n}:ef02) before the bootloader is installed")


def _with_bios_boot(numbered: list[tuple[int, object]], label: str) -> list[tuple[int, object]]:
    """gpt and a legacy (BIOS) boot, no ESP: the disk's BIOS boot partition, or one added (1 MiB, under the
    lowest free number: the first on the disk where 1 is free, and no other partition renumbered)."""
    ds = [d for _, d in numbered]
    if label != "gpt" or any(d.fs == BIOS_BOOT or d.mountpoint == "/boot/efi" and d.fs == "vfat" for d in ds):
        return numbered
    used = {n for n, _ in numbered}
    n = next(i for i in range(1, len(used) + 2) if i not in used)
    return sorted([(n, DiskRecord(f"xvda{n}", "", BIOS_BOOT, f"{BIOS_BOOT_MIB}M")), *numbered], key=lambda nd: nd[0])


def layout_notes(layouts: dict[str, str]) -> list[str]:
    """What the summary says of the layouts written: a BIOS boot partition disks-layout.xml cannot type."""
    text = layouts.get("disks-layout.xml", "")
    at = text.find("BIOS boot partition for grub-pc")
    if at < 0:
        return []
    return ["WARNING: disks-layout.xml: " + text[at:text.index(" -->", at)]]


def layout_xml(disks, fstab: str, vm: str, keep_xen: bool, header: bool = False, label: str = "msdos") -> str:
    """A SystemImager layout (the <config> vocabulary of autoinstallscript.conf and disks-layout.xml)
    for the VM's ``disks`` (record DiskRecords: vdev xvdaN, mountpoint, fs, size, options): one disk
    whose partition N is the VM's xvdaN, /dev/sda unless ``keep_xen``; each filesystem's fsinfo
    takes its options, dump and pass from the VM's fstab, and the fstab's other (network, pseudo)
    entries follow with format="no", as si_prepareclient writes them. disks-layout.xml (v5) also
    names the bootloader: grub2, for EFI where a vfat /boot/efi is among the disks; a gpt disk booted
    legacy gets a BIOS boot partition (_with_bios_boot)."""
    base = "/dev/xvda" if keep_xen else "/dev/sda"
    rows, by_mp, parts, used = [], {}, [], set()
    lines = _fstab_lines(fstab)
    for f in lines:
        by_mp.setdefault("swap" if f[2] == "swap" else os.path.normpath(f[1]), f)
    ordered = sorted(disks, key=lambda d: _num(d.vdev, 0))
    numbered = _with_bios_boot([(_num(d.vdev, i), d) for i, d in enumerate(ordered, 1)], label)
    for num, d in numbered:
        dev = f"{base}{num}"
        # msdos: the boot flag on /, partitions 5 and up logical in an extended one (made before
        # the first of them); gpt: parted's boot flag marks the EFI system partition, so only it
        if label == "msdos" and num >= 5 and not any(' p_type="extended"' in p for p in parts):
            ext = max([_num(x.vdev, 0) for x in ordered if _num(x.vdev, 0) < 5] + [0]) + 1
            parts.append(f'    <part num="{min(ext, 4)}" size="*" p_type="extended" p_name="-" flags="-" />')
        boot = d.mountpoint == "/boot/efi" and d.fs == "vfat" if label == "gpt" else d.mountpoint == "/"
        kind = "logical" if label == "msdos" and num >= 5 else "primary"
        flags = "boot" if boot else "-"
        if d.fs == BIOS_BOOT:  # no filesystem: no fsinfo
            if not header:
                parts.append(f"    <!-- {UNTYPED.format(n=num)} -->")
            parts.append(f'    <part num="{num}" size="{parse_mib(d.size or "0")}" p_type="primary" p_name="-" '
                         f'flags="{BIOS_BOOT if header else "-"}" />')
            continue
        parts.append(f'    <part num="{num}" size="{parse_mib(d.size or "0")}" p_type="{kind}" p_name="-" '
                     f'flags="{flags}" />')
        mp = d.mountpoint or "swap"
        f = by_mp.get(mp if d.fs != "swap" else "swap")
        used.add(id(f))
        mount_dev = f[0] if f and f[0].startswith(("UUID=", "LABEL=")) else None
        options = f[3] if f and len(f) > 3 else (d.options or "defaults")
        dump, pas = (f[4] if f and len(f) > 4 else "0"), (f[5] if f and len(f) > 5 else "0")
        rows.append((dev, mount_dev, mp, d.fs, options, dump, pas, False))
    for f in lines:
        if id(f) not in used and f[2] not in DISK_FS:
            rows.append((f[0], None, f[1], f[2], f[3] if len(f) > 3 else "defaults",
                         f[4] if len(f) > 4 else "0", f[5] if len(f) > 5 else "0", True))
    out = [AIS_HEADER.format(vm=vm) if header else "", "<config>\n",
           f'  <disk dev="{base}" label_type="{label}" unit_of_measurement="MB">\n', *(p + "\n" for p in parts),
           "  </disk>\n\n"]
    if not header:
        efi = any(d.mountpoint == "/boot/efi" and d.fs == "vfat" for d in disks)
        out.append(f'  <bootloader flavor="grub2" install_type="{"efi" if efi else "legacy"}" default_entry="0" '
                   f'timeout="2">\n    <target dev="{base}" />\n  </bootloader>\n\n')
    for n, (dev, mdev, mp, fs, options, dump, pas, nofmt) in enumerate(rows, 1):
        md = f" mount_dev={quoteattr(mdev)}" if mdev else ""
        out.append(f'  <fsinfo line="{n * 10}" real_dev={quoteattr(dev)}{md} mp={quoteattr(mp)} fs={quoteattr(fs)} '
                   f'options={quoteattr(options)} dump={quoteattr(dump)} pass={quoteattr(pas)}'
                   f'{" format=" + chr(34) + "no" + chr(34) if nofmt else ""} />\n')
    if header:  # autoinstallscript.conf (4.x): its <boel> closes it; udev: every kernel a VM runs has it
        out.append('\n  <boel devstyle="udev"/>\n')
    out.append("\n</config>\n")
    return "".join(out)


def quoteattr(value: str) -> str:
    """An attribute value in double quotes, as SystemImager writes them (any character escaped)."""
    return '"' + escape(value, {'"': "&quot;", "\n": "&#10;", "\t": "&#9;", "\r": "&#13;"}) + '"'


def _num(vdev: str, default: int) -> int:
    digits = vdev[len(vdev.rstrip("0123456789")):]
    return int(digits) if digits else default


def write_metadata(tree: str, vm: str, layout: dict[str, str], now: float | None = None) -> list[str]:
    """SystemImager's files in the staging tree (each written anew, never in place: with --update a
    file may be a hard link into the published image): the layout files given, IMAGE_RETRIEVAL_TIME
    (local time, as si_getimage writes it), IMAGE_RETRIEVED_FROM and mounted_filesystems (what
    si_prepareclient's ``mount`` would list, from the tree's fstab: si_getimage excludes the
    network ones from a later capture of a machine installed from it). Returns the guest paths."""
    g = Guest(tree)
    meta = g.makedirs(META_DIR)  # a guest link on the way resolves inside the tree
    try:
        fstab = g.read_text("etc/fstab") or ""
    except GuestPathError:  # a link out of the tree, a directory: nothing mounted to say
        fstab = ""
    mounts = "".join(f"{f[0]} on {f[1]} type {f[2]} ({f[3] if len(f) > 3 else 'defaults'})\n"
                     for f in _fstab_lines(fstab) if f[2] != "swap" and f[1].startswith("/"))
    files = {**layout, "IMAGE_RETRIEVAL_TIME": time.strftime("%Y.%m.%d %H:%M\n", time.localtime(now)),
             "IMAGE_RETRIEVED_FROM": vm + "\n", "mounted_filesystems": mounts}
    for name, text in files.items():
        atomic.write(os.path.join(meta, name), text, 0o644)  # over a link there: the link replaced
    return [f"{META_DIR}/{n}" for n in files]


def layout_files(tree: str) -> tuple[str, ...]:
    """The layout files to write: those the tree already has (the site's format), else both."""
    g = Guest(tree)
    have = tuple(n for n in LAYOUT_FILES if g.exists(f"{META_DIR}/{n}"))
    return have or LAYOUT_FILES


# -- publication --------------------------------------------------------------------------
RENAME_EXCHANGE, AT_FDCWD = 2, -100


def _exchange(a: str, b: str) -> bool:
    """Swap two paths in one step (renameat2); False where the kernel or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(e, os.strerror(e), a)


def publish(stage: str, target: str, replace: bool) -> None:
    """``stage`` becomes ``target``; an existing target only with ``replace`` (swapped out, removed)."""
    if not os.path.lexists(target):
        os.rename(stage, target)  # a directory made meanwhile and not empty: ENOTEMPTY, nothing lost
        return
    if not replace:
        raise Fatal(f"image {target} exists", "add --force to replace it, or --update to refresh it")
    old = _aside(target, OLD)
    if _exchange(stage, target):
        os.rename(stage, old)  # the old image, now at the staging name, renamed for clear_stale's rule
    else:
        os.rename(target, old)
        os.rename(stage, target)
    shutil.rmtree(old)


def write_stub(cfg: StoreConfig, name: str, path: str) -> str:
    """RSYNC_STUB_DIR/40NAME exactly as SystemImager::Server->create_image_stub writes it."""
    os.makedirs(cfg.stub_dir, 0o755, exist_ok=True)
    stub = os.path.join(cfg.stub_dir, f"40{name}")
    atomic.write(stub, f"[{name}]\n\tpath={path}\n\n", 0o644)
    return stub


def write_server_layout(cfg: StoreConfig, name: str, text: str) -> str | None:
    """The server's copy scripts/disks-layouts/IMAGE.xml (si_getimage's), where SystemImager's
    scripts dir exists (no server installed: none)."""
    if not os.path.isdir(cfg.scripts_dir):
        return None
    d = os.path.join(cfg.scripts_dir, "disks-layouts")
    os.makedirs(d, 0o755, exist_ok=True)
    atomic.write(os.path.join(d, f"{name}.xml"), text, 0o644)
    return os.path.join(d, f"{name}.xml")
