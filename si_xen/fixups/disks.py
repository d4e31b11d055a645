"""disks: fstab and bootloader device references for the VM's real layout (xvdaN)."""

from __future__ import annotations

import re

from si_xen.fixups.base import Ctx, fixup
from si_xen.fixups.bootfiles import edit_cmdlines, set_arg

# fstab sources that name a local block device of the golden client
_BLOCK = re.compile(r"^(/dev/|UUID=|LABEL=|PARTUUID=|PARTLABEL=)")


def fstab(text: str | None, ctx: Ctx) -> str:
    """The VM's fstab: one line per PARTITIONn, plus the golden client's non-disk mounts."""
    s = ctx.s
    out = ["# /etc/fstab: written by si-xen for this Xen VM's disks.",
           "# <file system> <mount point> <type> <options> <dump> <pass>"]
    for p in sorted(s.partitions, key=lambda p: (p.fstype == "swap", len(p.mountpoint), p.index)):
        if p.fstype == "swap":
            out.append(f"{s.dev(p)}\tnone\tswap\tsw\t0\t0")
        else:
            out.append(f"{s.dev(p)}\t{p.mountpoint}\t{p.fstype}\t{p.options or 'defaults'}\t0\t{1 if p.mountpoint == '/' else 2}")
    mine = {p.mountpoint for p in s.partitions}
    kept = []
    for line in (text or "").splitlines():
        f = line.split()
        if not f or f[0].startswith("#") or line.startswith("# /etc/fstab: written by si-xen"):
            continue
        if len(f) < 3 or _BLOCK.match(f[0]) or f[2] in ("swap", "iso9660", "udf", "auto") or f[1] in mine:
            continue  # the golden client's disks, CD and floppy: not this VM's
        kept.append(line)
    if not any(len(k.split()) > 1 and k.split()[1] == "/proc" for k in kept) and ctx.os.init != "systemd":
        kept.insert(0, "proc\t/proc\tproc\tdefaults\t0\t0")
    return "\n".join(out + kept) + "\n"


@fixup("fstab", 90, "make-fstab", watches=("etc/fstab",))
def make_fstab(ctx: Ctx) -> None:
    """Regenerate /etc/fstab from the VM's partitions (PARTITIONn: swap first, root xvda2).

    The golden client's disk lines (sd/hd/cciss, by-id, LABEL=, UUID=) go; network and
    virtual filesystems (proc, tmpfs, nfs...) are kept. Needs NUMPARTITIONS/PARTITIONn.
    """
    if not ctx.s.partitions:
        ctx.warn("fstab: no partitions given (NUMPARTITIONS/PARTITIONn); /etc/fstab left alone")
        return
    if ctx.s.root_partition is None:
        ctx.warn("fstab: no PARTITIONn mounts /; /etc/fstab left alone")
        return
    ctx.write("etc/fstab", fstab(ctx.guest.read_text("etc/fstab"), ctx))


def _args(ctx: Ctx, args: str) -> str:
    s = ctx.s
    root = s.dev(s.root_partition)
    swap = next((s.dev(p) for p in s.partitions if p.fstype == "swap"), None)
    words = args.split()
    if any(w.startswith("root=") for w in words):
        args = set_arg(args, "root", root)
    if any(w.startswith("resume=") for w in words):
        args = set_arg(args, "resume", swap)  # a golden client's swap UUID: a 30 s wait at boot
    return args


@fixup("bootloader", 92, "fix-bootloader",
       watches=("boot/**", "etc/default/grub", "etc/initramfs-tools/conf.d/resume"))
def fix_bootloader(ctx: Ctx) -> None:
    """Point the bootloader files at the VM's disks: root=/dev/xvdaN, resume=, device.map.

    menu.lst, grub.conf, grub.cfg, /etc/default/grub, BLS entries: root= and resume=
    values naming the golden client's disks (sd/hd/cciss, by-id, LABEL=, UUID=) become the
    VM's xvdaN; grub's device.map maps (hd0) to the VM's disk; initramfs RESUME= follows.
    """
    s = ctx.s
    if s.root_partition is None:
        ctx.warn("bootloader: no root partition in PARTITIONn; bootloader files left alone")
        return
    edit_cmdlines(ctx, lambda a: _args(ctx, a))
    for path in ("boot/grub/device.map", "boot/grub2/device.map"):
        ctx.edit(path, lambda t: re.sub(r"(?m)^(\(hd0\)\s+)\S+$", rf"\g<1>/dev/{s.disk}", t))
    swap = next((s.dev(p) for p in s.partitions if p.fstype == "swap"), "none")
    ctx.edit("etc/initramfs-tools/conf.d/resume",
             lambda t: re.sub(r"(?m)^RESUME=.*$", f"RESUME={swap}", t))
