"""si_updatexenvm's boot step: the image's new kernel checked for its memory need before any change,
copied out where Xen reads it under new names, and put in place once the update's disks are (a
libvirt VM's definition names the same files; an initramfs gained or lost redefines its ``<initrd>``)."""

from __future__ import annotations

import os
import re
import shutil
import stat
from dataclasses import replace

from . import atomic, domain, toolstack
from .deploy import boot_dir
from .errors import Fatal
from .toolstack import libvirt


def check_memory(u) -> None:
    """A new kernel or initramfs may need more than the VM has: said before anything changes."""
    from . import boot

    k = boot.find_kernel(u.image.guest)
    if k is None:
        raise Fatal(f"image '{u.image.name}' has no kernel in /boot any more", "fix the image, then update")
    need = chosen(u, k, boot.memory_needed(u.image.guest, k, u.image.path)).memory_need
    if need > u.rec.memory:
        raise Fatal(f"the image's kernel {k.version} needs {need} MiB to boot; VM '{u.rec.name}' has {u.rec.memory} MiB",
                    f"give it more (memory = {need} in {u.rec.config}), then run si_updatexenvm {u.rec.name} again")
    check_libvirt(u.rec, bool(k.initrd), k.version)


def chosen(u, k, need: int | None = None):
    """The initramfs the VM boots of the image's kernel ``k``, chosen as its deploy did (a VM
    recorded before si-xen could choose boots the image's own). ``need``: the image's own's."""
    from . import boot

    if need is None:
        need = boot.memory_needed(u.image.guest, k, u.image.path)
    return boot.choose_initramfs(u.image.guest, k, need, u.rec.request.get("initramfs") or "image",
                                 boot.root_fstypes(u.rec.disks))


def check_libvirt(rec, initrd: bool, version: str) -> None:
    """A libvirt VM's definition names its direct-boot files once (BOOT_DIR/vmlinuz, initrd.img):
    new files under those names need nothing; an initramfs gained or lost is a redefinition of its
    ``<initrd>`` (put_in_place), for which libvirtd must answer: checked before any change."""
    if redefined(rec) and libvirt.has_initrd(_read(libvirt.xml_path(rec.config))) != initrd:
        virsh = libvirt.find_virsh()
        if virsh is None:
            toolstack.require_libvirt()  # its FATAL: install virsh
        why = (f"the image's kernel {version} {'needs' if initrd else 'comes without'} an initramfs now, so the "
               f"libvirt definition of VM '{rec.name}' changes")
        virsh.reachable(f"; {why}; nothing was changed",
                        f"start libvirtd (systemctl start libvirtd), then run si_updatexenvm {rec.name} again")
        # libvirt's domain must still be the one si-xen defined: not one the admin undefined (the
        # update would stop half-way at its kernel step) nor another of that name (edited unasked)
        has, ours = virsh.domuuid(rec.name), domain.uuid_of(rec.name, rec.mac)
        if has != ours:
            held = f"has no domain '{rec.name}'" if has is None else \
                f"has {rec.name} as uuid {has}, not the one si-xen defined"
            raise Fatal(f"{why}, and libvirt {held}; nothing was changed",
                        f"define si-xen's domain again (virsh define {libvirt.xml_path(rec.config)}), or "
                        f"si_rmxenvm {rec.name}, then si_mkxenvm --toolstack libvirt again")


def redefined(rec) -> bool:
    """A libvirt VM booted from its own copy of the image's kernel (dom0's --kernel never changes)."""
    return rec.toolstack == "libvirt" and rec.boot == "direct" and not rec.request.get("kernel")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def run(u) -> None:
    """The new kernel where Xen reads it: copied out under new names (put in place by the swap,
    or after the record for an update in place), or a grub.cfg naming it."""
    from . import boot
    from .guestfs import RecordingGuest
    from .made import File

    guest = RecordingGuest(u.root)
    k = boot.find_kernel(guest)
    img = boot.find_kernel(u.image.guest)
    if k and img and (img.version, img.initrd) == (k.version, k.initrd):  # the image's: slimmed as it chose
        k = replace(k, slim=chosen(u, img).slim)
    elif k and k.initrd:  # a kernel the VM installed itself boots its own initramfs: is there room for it?
        need = boot.memory_needed(guest, k, u.image.name)
        if need > u.rec.memory:
            raise Fatal(f"VM '{u.rec.name}' would boot its own kernel {k.version}, whose initramfs needs {need} MiB; "
                        f"it has {u.rec.memory} MiB", f"give it more (memory = {need} in {u.rec.config}), then run "
                        f"si_updatexenvm {u.rec.name} again")
    if not u.rec.request.get("kernel"):
        u.initramfs = boot.initramfs_kind(k)
    if u.rec.boot != "direct":
        root = next(d for d in u.disks if d.mountpoint == "/")
        boot.write_grub_cfg(guest, k, root.vdev, any(d.mountpoint == "/boot" for d in u.disks),
                            f"{u.image.os.pretty} (si-xen)")
        u.owned["boot"] = tuple(sorted(set(u.owned.get("boot", ())) | guest.touched))
        return
    if u.rec.request.get("kernel"):  # a kernel of dom0's: not the image's to change
        return
    where = boot_dir(u.rec.storage, u.rec.storage_root, u.rec.name, u.settings.paths["state_dir"])
    for gpath, name in ((k.kernel, "vmlinuz"), (k.initrd, "initrd.img")):
        if gpath is None:  # a kernel without an initramfs: Xen must not load the old one with it
            u.kernel_files[os.path.join(where, name)] = ""
            continue
        new = u.journal.made(File(os.path.join(where, f".{name}.upd-{os.getpid()}"))).path
        shutil.copyfile(k.slim if name == "initrd.img" and k.slim else guest.path(gpath), new)
        u.kernel_files[os.path.join(where, name)] = new


def put_in_place(u) -> None:
    """The new kernel files in place (an initramfs the new kernel lacks removed), and the config's
    ramdisk line naming the initramfs if there is one now, else none. Each part can run again."""
    ramdisk = None
    for final, new in u.kernel_files.items():
        if new:
            os.replace(new, final)
        elif os.path.lexists(final):
            os.unlink(final)
        if final.endswith("/initrd.img"):
            ramdisk = final if new else ""
    if ramdisk is not None:
        set_ramdisk(u.rec.config, ramdisk)
        if redefined(u.rec):
            set_initrd(u.rec, ramdisk)


def set_initrd(rec, path: str) -> None:
    """A libvirt VM's ``<initrd>`` as its xl.cfg's ramdisk line: in libvirt's definition, then in
    the XML beside the config (in that order: run again after a crash between the two, the file
    still differs, and libvirt's definition, already right, is left as it is)."""
    xml = libvirt.xml_path(rec.config)
    text = _read(xml)
    new = libvirt.with_initrd(text, path)
    if new != text:
        toolstack.require_libvirt().set_initrd(rec.name, path, domain.uuid_of(rec.name, rec.mac))
        atomic.write(xml, new, stat.S_IMODE(os.stat(xml).st_mode))


RAMDISK = re.compile(r"^ramdisk\s*=.*\n?", re.M)


def set_ramdisk(cfg: str, path: str) -> None:
    """The xl config's ramdisk line: ``path`` after the kernel line, or none (``path`` empty)."""
    with open(cfg) as f:
        text = f.read()
    new = RAMDISK.sub("", text)
    if path:
        new = re.sub(r"^(kernel\s*=.*\n)", lambda m: f'{m[1]}ramdisk     = "{path}"\n', new, count=1, flags=re.M)
    if new != text:
        atomic.write(cfg, new, stat.S_IMODE(os.stat(cfg).st_mode))
