"""kernel: modules for a supplied kernel, and initramfs images that cannot find a Xen disk."""

from __future__ import annotations

import os
import re
import shutil

from si_xen.fixups.base import Ctx, fixup
from si_xen.initramfs import Unreadable, scan_cached

XEN_DRIVERS = ("xen-blkfront", "xen-netfront")
INITRDS = ("boot/initrd.img-{v}", "boot/initramfs-{v}.img", "boot/initrd-{v}.img", "boot/initrd-{v}")
# where each family's initramfs tool takes extra drivers from on its next rebuild
DRIVER_CONF = {"initramfs-tools": ("etc/initramfs-tools/modules", "{m}\n"),
               "dracut": ("etc/dracut.conf.d/si-xen.conf", 'add_drivers+=" {m} "\n')}


def _kernel_version(ctx: Ctx) -> str:
    if ctx.s.modules:
        return os.path.basename(ctx.s.modules.rstrip("/"))
    m = re.match(r"(?:vmlinuz|vmlinux|bzImage|kernel)-(.+)$", os.path.basename(ctx.s.kernel))
    return m.group(1) if m else ""


def _copy_modules(ctx: Ctx) -> None:
    ver = _kernel_version(ctx)
    src = ctx.s.modules or f"/lib/modules/{ver}"
    dest = f"lib/modules/{ver}"
    if not ver or ctx.guest.exists(dest):
        return
    if not os.path.isdir(src):
        ctx.warn(f"kernel: no modules for {ctx.s.kernel} at {src}; the guest boots without them")
        return
    ctx.guest.makedirs("lib/modules")
    ctx.own(dest)  # before the copy: one cut short is the fixup's too
    shutil.copytree(src, ctx.guest.path(dest), symlinks=True)
    ctx.note(f"copied modules {src} -> /{dest}")


def _check_initrd(ctx: Ctx, ver: str) -> None:
    g = ctx.guest
    config = g.read_text(f"boot/config-{ver}") or ""
    m = re.search(r"(?m)^CONFIG_XEN_BLKDEV_FRONTEND=([ym])", config)
    if config and not m:
        ctx.warn(f"kernel: /boot/vmlinuz-{ver} has no Xen block driver (CONFIG_XEN_BLKDEV_FRONTEND "
                 "unset): it cannot boot as a PV guest; boot a Xen-capable kernel instead")
        return
    if m and m.group(1) == "y":
        return
    initrd = next((p.format(v=ver) for p in INITRDS if g.isfile(p.format(v=ver))), None)
    if initrd is None:
        return
    try:
        have = scan_cached(g.path(initrd)).modules
    except Unreadable as e:  # si_mkxenvm refused a booted one at planning: another kernel's, or xen-tools'
        ctx.warn(f"kernel: /{initrd} {e}; rebuild it in the guest before booting its kernel")
        return
    except OSError as e:
        ctx.warn(f"kernel: cannot read /{initrd} ({e.strerror}); check it holds xen-blkfront")
        return
    missing = [d for d in XEN_DRIVERS if d not in have]
    if "xen-blkfront" not in missing:
        return
    ctx.warn(f"kernel: /{initrd} lacks {', '.join(missing)}: the VM cannot mount its root disk; "
             "rebuild it inside the guest (update-initramfs -u / dracut -f) - the drivers are added "
             "to its initramfs configuration for that rebuild")
    conf = DRIVER_CONF.get(ctx.os.initramfs)
    if conf:
        path, line = conf
        text = g.read_text(path) or ""
        add = "".join(line.format(m=d) for d in missing if not re.search(rf"(?m)^[^#]*\b{d}\b", text))
        if add:
            ctx.write(path, text + ("" if text.endswith("\n") or not text else "\n") + add)


@fixup("kernel", 80, "install-modules",
       watches=("boot/**", "{,usr/}lib/modules/**", "etc/initramfs-tools/**", "etc/dracut.conf.d/*"))
def kernel(ctx: Ctx) -> None:
    """Kernel support: modules for a supplied kernel; initramfs checked for Xen block drivers.

    With a dom0-supplied kernel (kernel=, no pygrub) its modules (modules= or
    /lib/modules/VERSION) are copied in when the guest lacks them, as xen-tools does.
    Otherwise each guest kernel's initramfs is read (never run) and one without
    xen-blkfront is reported, with the drivers added to its initramfs config.
    """
    if ctx.s.kernel and not ctx.s.pygrub:
        _copy_modules(ctx)
        return
    for path in ctx.guest.glob("boot", "vmlinu[xz]-*"):
        _check_initrd(ctx, path.split("-", 1)[1])
