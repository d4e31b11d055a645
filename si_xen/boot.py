"""Make the guest bootable under Xen and know what its kernel needs.

Modes: ``direct`` (the guest's own kernel and initrd, copied out of its /boot and handed
to Xen), ``pygrub`` and ``pvgrub2`` (a bootloader reads /boot/grub/grub.cfg in the guest).
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field, replace

from . import atomic, initramfs, kernelimage
from .errors import Fatal
from .guestfs import Guest
from .made import File
from .storage.reflink import beside, reflink

PVGRUB2 = {"pv": "/usr/lib/grub-xen/grub-x86_64-xen.bin", "pvh": "/usr/lib/grub-xen/grub-i386-xen_pvh.bin"}
INITRD_NAMES = ("initrd.img-{v}", "initramfs-{v}.img", "initrd-{v}.img", "initrd-{v}")
XEN_SUFFIX = ".xen"  # the Xen-sized initramfs in a guest booted by its grub.cfg: /boot/initrd.img-V.xen
BASE_MEMORY_MIB = 192  # kernel, page tables and a minimal userland, measured with Debian 12 PV


@dataclass(frozen=True)
class GuestKernel:
    version: str
    kernel: str  # guest path
    initrd: str | None  # guest path
    memory_need: int | None = None  # MiB to get past the initramfs that boots (planner.check_boot)
    slim: str | None = None  # host path of the Xen-sized initramfs that boots instead of ``initrd`` (choose_initramfs)
    own_need: int | None = None  # MiB the guest's own initramfs would need
    note: str = ""  # the initramfs chosen, as the admin reads it
    slim_result: object = field(default=None, compare=False)  # initramfs_slim.Result: kept with the image's boot facts


def _vkey(v: str):
    return [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", v)]


def find_kernel(guest: Guest) -> GuestKernel | None:
    """The newest /boot/vmlinu[xz]-VERSION that has a matching initrd (or none at all)."""
    found = []
    for name in guest.listdir("/boot"):
        m = re.fullmatch(r"vmlinu[xz]-(.+)", name)
        if m and guest.isfile(f"/boot/{name}"):
            v = m.group(1)
            initrd = next((f"/boot/{n.format(v=v)}" for n in INITRD_NAMES if guest.isfile(f"/boot/{n.format(v=v)}")), None)
            found.append(GuestKernel(v, f"/boot/{name}", initrd))
    found.sort(key=lambda k: (k.initrd is not None, _vkey(k.version)))
    return found[-1] if found else None


def memory_needed(guest: Guest, k: GuestKernel, image: str | None = None, unpacked: int = 0) -> int:
    """Memory (MiB) the guest needs to get past its initramfs, rounded up to 32 MiB, once the
    kernel and initramfs are proven to be what they claim (else one Fatal naming the file).

    The initramfs counts as its file plus what it really unpacks to (measured, never taken
    from a trailer a corrupt file could fake): it cannot need more than it holds.
    ``image``: the image's name, None for files given with --kernel/--initrd; ``unpacked``: what
    the initramfs unpacks to when another reading of it (initramfs_slim's) measured it already."""
    kpath = guest.path(k.kernel)
    problem = kernelimage.problem(kpath)
    if problem:
        raise _broken("kernel", k.kernel, problem, image)
    if not k.initrd:
        return need_mib(os.path.getsize(kpath))
    path = guest.path(k.initrd)
    try:
        unpacked = unpacked or initramfs.scan_cached(path).unpacked
    except initramfs.NoTool as e:
        package = {"xz": "xz-utils"}.get(e.tool, e.tool)
        raise Fatal(f"cannot check the initramfs {k.initrd}: it {e}", f"apt-get install {package}") from None
    except initramfs.Unreadable as e:
        raise _broken("initrd", k.initrd, str(e), image) from None
    return need_mib(os.path.getsize(kpath), os.path.getsize(path), unpacked)


def need_mib(kernel_bytes: int, initrd_bytes: int = 0, unpacked: int = 0) -> int:
    """The rule: a minimal guest, its kernel, and its initramfs both as loaded and as unpacked
    (both are in memory until the initramfs is freed), rounded up to 32 MiB."""
    need = BASE_MEMORY_MIB + kernel_bytes // 2**20 + (initrd_bytes + unpacked) // 2**20
    return (need + 31) // 32 * 32


def root_fstypes(disks) -> set[str]:
    """The filesystems a Xen-sized initramfs must mount: the root's and /usr's (a plan's or a
    record's disks)."""
    return {d.fs for d in disks if d.mountpoint in ("/", "/usr")}


def initramfs_kind(k: GuestKernel | None) -> str:
    """The record's word for the initramfs a guest kernel boots: slim, image, or - (none)."""
    return "-" if k is None or not k.initrd else "slim" if k.slim else "image"


def choose_initramfs(guest: Guest, k: GuestKernel, need: int, mode: str, fstypes, known=None) -> GuestKernel:
    """The initramfs the VM boots, with the memory it needs: ``mode`` auto (a Xen-sized one made
    from the guest's where that is at most half of it: Debian's MODULES=most carries every
    machine's drivers, a Xen guest uses a dozen), slim (that one, or one FATAL) or image (the
    guest's own). ``need``: the guest's own's (memory_needed); ``known``: the Result of an earlier
    VM of this image generation (planner's boot facts), which spares the file's hash. Never a guest
    binary run: the initramfs is read and written as data (initramfs_slim)."""
    k = replace(k, memory_need=need, own_need=need, slim=None, note="")
    if mode == "image" or not k.initrd:
        return replace(k, note="the image's own (--initramfs image)" if k.initrd else "")
    from . import initramfs_slim

    r = known if known is not None and (known.path is None or os.path.isfile(known.path)) else \
        initramfs_slim.slim_cached(guest.path(k.initrd), fstypes=tuple(sorted(fstypes)))
    if r is known and r.path:
        initramfs_slim.used(r.path)  # so no prune takes it as unused while VMs of the image boot it
    k = replace(k, slim_result=r)
    own = f"{k.initrd}, {r.size_before / 2**20:.1f} MiB"
    if not r.slimmed:
        if mode == "slim":
            raise Fatal(f"--initramfs slim: the image's initramfs {k.initrd} {r.reason}",
                        "use --initramfs image (or auto) to boot it as it is (an existing VM: "
                        "si_mkxenvm --rebuild NAME --initramfs image)")
        return replace(k, note=f"the image's own ({own}): it {r.reason}")
    if mode == "auto" and r.size_before + r.unpacked_before < 2 * (r.size_after + r.unpacked_after):
        return replace(k, note=f"the image's own ({own}): a Xen-sized one would be more than half of it")
    slim_need = need_mib(os.path.getsize(guest.path(k.kernel)), r.size_after, r.unpacked_after)
    lacks = [m for m in initramfs_slim.XEN_DRIVERS if m in r.missing]
    warn = f"; WARNING: it has no {', '.join(lacks)}, the guest may not find its disks" if lacks else ""
    return replace(k, slim=r.path, memory_need=min(need, slim_need),
                   note=f"Xen-sized, {r.size_after / 2**20:.1f} MiB made from {own}, {len(r.kept)} modules "
                        f"kept; needs {slim_need} MiB of memory instead of {need}{warn}")


def _broken(what: str, path: str, problem: str, image: str | None) -> Fatal:
    if image is None:
        return Fatal(f"--{what} {path} {problem}", f"give a working {'initramfs' if what == 'initrd' else what} to --{what}")
    if what == "kernel":
        fix = "reinstall the kernel package on the golden client and si_getimage again"
    else:
        v = re.sub(r"^(initrd\.img|initramfs|initrd)-|\.img$", "", os.path.basename(path))
        fix = f"rebuild it on the golden client (update-initramfs -u -k {v} or dracut -f --kver {v}) and si_getimage again"
    return Fatal(f"image '{image}': its {'initramfs' if what == 'initrd' else what} {path} {problem}",
                 f"{fix}, or boot a kernel of the dom0 with --kernel and --initrd")


def cmdline(root_vdev: str, extra: str = "") -> str:
    return " ".join(x for x in (f"root=/dev/{root_vdev} ro console=hvc0", extra) if x)


def copy_out(guest: Guest, k: GuestKernel, boot_dir: str, journal, shared: str | None = None) -> tuple[str, str | None]:
    """Copy the guest's kernel/initrd out of the guest to where Xen reads them (dom0 side).

    With ``shared`` (a cloned VM's base disk), they are kept once beside the base and each
    VM gets a reflink, so a clone costs no kernel-sized copy. A Xen-sized initramfs (``k.slim``)
    boots under the same name as the guest's would."""
    journal.makedirs(boot_dir)
    out = []
    for gpath, name in ((k.kernel, "vmlinuz"), (k.initrd, "initrd.img")):
        if gpath is None:
            out.append(None)
            continue
        src = k.slim if name == "initrd.img" and k.slim else guest.path(gpath)
        old = File(os.path.join(boot_dir, name))
        dst = journal.made(old, old.delete).path  # journaled first: a copy cut short is removed too
        if shared:
            # the slim one by its cache name (its source's hash, VERSION, filesystems): never an older one
            slim = os.path.splitext(os.path.basename(k.slim or ""))[0]  # no .img: a base is listed by its .img
            cached = beside(shared, f"initrd-xen-{slim}" if src == k.slim else name.split(".")[0])
            if not os.path.isfile(cached):
                with atomic.replacing(cached) as tmp:
                    shutil.copyfile(src, tmp)
            try:
                reflink(cached, dst)
            except OSError:
                shutil.copyfile(cached, dst)
        else:
            shutil.copyfile(src, dst)
        out.append(dst)
    return out[0], out[1]


def write_grub_cfg(guest: Guest, k: GuestKernel, root_vdev: str, boot_is_separate: bool, title: str) -> None:
    """A grub.cfg both pygrub and pvgrub2 read (a golden client's own may name other disks).
    A Xen-sized initramfs (``k.slim``) goes beside the guest's as ``NAME.xen``, a name
    update-initramfs and dracut never write, so the guest's tools keep theirs; the first entry
    boots it, the second the guest's own (pygrub's menu shows both)."""
    prefix = "" if boot_is_separate else "/boot"
    old = "/boot/grub/grub.cfg"
    if guest.isfile(old) and not guest.exists(old + ".si-xen-orig"):
        guest.write_text(old + ".si-xen-orig", guest.read_text(old) or "")
    xen = f"{k.initrd}{XEN_SUFFIX}" if k.initrd and k.slim else None
    if xen:
        guest.copy_in(k.slim, xen)
    kname = os.path.basename(k.kernel)
    entries = [(title, xen), (f"{title}, the image's own initramfs", k.initrd)] if xen else [(title, k.initrd)]
    lines = ["# Written by si_mkxenvm: boots this guest under Xen (pygrub or pvgrub2).", "set default=0", "set timeout=2"]
    for name, initrd in entries:
        lines += [f"menuentry '{name}' {{", f"    linux {prefix}/{kname} {cmdline(root_vdev)}"]
        if initrd:
            lines.append(f"    initrd {prefix}/{os.path.basename(initrd)}")
        lines.append("}")
    guest.write_text(old, "\n".join(lines + [""]))
    for stale in guest.glob("/boot", f"*{XEN_SUFFIX}"):  # an earlier kernel's, or one no longer wanted:
        if stale != xen:  # gone once grub.cfg names it no more (a kill before leaves a bootable VM)
            guest.unlink(stale)


def check_supplied(kernel: str | None, initrd: str | None) -> None:
    for what, path in (("kernel", kernel), ("initrd", initrd)):
        if path and not os.path.isfile(path):
            raise Fatal(f"{what} {path} not found", f"give an existing file to --{what}")
    if initrd and not kernel:
        raise Fatal("--initrd given without --kernel", "supply the matching kernel with --kernel")
