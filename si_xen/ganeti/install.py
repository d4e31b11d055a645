"""create, import, export and rename on the disks Ganeti hands over, with si-xen's pipeline.

Disk 0 holds the root filesystem, whole (the guest sees it as xvda: Ganeti's sda); with the
OS parameter swap=yes (the default) the last of two or more disks is the swap; other disks
are left to the admin (export/import copy them raw). The guest boots the way the cluster's
xen-pvm parameters say: pygrub (use_bootloader), pvgrub2 (kernel_path is grub's Xen image)
or a dom0 kernel (kernel_path, initrd_path), whose modules the kernel fixup copies in.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
from dataclasses import replace

from .. import config, planner, proc, service
from ..errors import Fatal
from ..fixups import run_all
from ..fixups.spec import spec_from_plan
from ..image import Image, open_at, source, survey
from ..plan import Disk, Plan
from ..record import VmRecord
from ..report import Reporter
from ..request import Request, Said, Storage
from ..storage.given import size_mib
from ..validate import ENV, check_hostname
from . import params
from .env import Instance

ROOT_VDEV = "xvda"  # Ganeti's sda (blockdev_prefix) is xvda in a mainline PV guest
TAR_FLAGS = ("--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--sparse")
HINT = "gnt-instance add -o systemimager+IMAGE (gnt-os list shows the images)"


def vdev(index: int) -> str:
    return "xvd" + "abcdefghijklmnopqrstuvwxyz"[index]


def settings(image: str | None = None):
    """xen.conf as si_mkxenvm reads it, with the records of Ganeti's installs kept apart
    (state_dir/ganeti): si_lsxenvm and si_rmxenvm leave Ganeti's instances to Ganeti."""
    s = config.load(None, image)
    return replace(s, paths=dict(s.paths, state_dir=os.path.join(s.paths["state_dir"], "ganeti")))


def swap_index(inst: Instance) -> int | None:
    if params.value(inst.osp, "swap") == "yes" and len(inst.disks) >= 2:
        return inst.disks[-1].index
    return None


def boot_mode(inst: Instance) -> tuple[str, str | None, str | None]:
    """(boot, kernel, initrd) from the cluster's xen-pvm parameters."""
    if inst.hypervisor and inst.hypervisor != "xen-pvm":
        raise Fatal(f"hypervisor {inst.hypervisor} is not supported by this OS", "use xen-pvm instances")
    hv = inst.hv
    if hv.get("use_bootloader", "").lower() in ("true", "1", "yes"):
        if "pygrub" not in os.path.basename(hv.get("bootloader_path", "") or "pygrub"):
            raise Fatal(f"bootloader {hv['bootloader_path']} is not pygrub",
                        "set -H xen-pvm:bootloader_path=/usr/lib/xen-4.17/bin/pygrub, or use pvgrub2 as kernel_path")
        return "pygrub", None, None
    kernel = hv.get("kernel_path", "")
    name = os.path.basename(kernel)
    if name.startswith("grub-") and name.endswith("-xen.bin"):
        return "pvgrub2", None, None
    root = hv.get("root_path", "")
    if root not in ("", f"/dev/{ROOT_VDEV}", "/dev/sda"):
        raise Fatal(f"the cluster's xen-pvm root_path is {root}, but this OS puts / on the whole disk {ROOT_VDEV}",
                    f"gnt-cluster modify -H xen-pvm:root_path=/dev/{ROOT_VDEV} (or boot with pvgrub2/pygrub)")
    if not kernel:
        raise Fatal("the instance has no xen-pvm kernel_path", "set -H xen-pvm:kernel_path=/usr/lib/grub-xen/grub-x86_64-xen.bin")
    return "direct", kernel, hv.get("initrd_path") or None


def request_for(inst: Instance, image: Image, tree: survey.Survey | None, skip: tuple[str, ...] = ()) -> Request:
    """The instance as a Request: its disks, its first NIC, its name; ``tree`` checks disk 0's size."""
    if not inst.disks:
        raise Fatal(f"instance {inst.name} has no disks", "gnt-instance add ... --disk 0:size=4G")
    name = check_hostname(inst.name, "INSTANCE_NAME")
    fs = params.value(inst.osp, "filesystem")
    d0 = inst.disks[0]
    disks = [Disk("disk", "/", fs, d0.size_mib, planner.ROOT_OPTIONS[fs], vdev=ROOT_VDEV, target=d0.path)]
    if (i := swap_index(inst)) is not None:
        d = inst.disks[i]
        disks.append(Disk("swap", "", "swap", d.size_mib, "sw", vdev=vdev(i), target=d.path))
    if tree is not None:
        need = survey.needed_mib(*tree.usage(["/"])["/"])
        have = d0.size_mib or size_mib(d0.path)
        if have < need:
            raise Fatal(f"disk 0 of {inst.name} has {have} MiB, image '{image.name}' needs {need} MiB",
                        f"give it at least {-(-need * 5 // 4 // 256) * 256} MiB: --disk 0:size=...")
    nic = inst.nics[0] if inst.nics else None
    ip = nic.ip if nic else ""
    prefix = nic.subnet.partition("/")[2] if nic else ""
    if ip and not prefix:
        raise Fatal(f"NIC 0 of {name} has the address {ip} but no network, so no netmask",
                    "connect it to a Ganeti network (gnt-network add --network=A.B.C.0/24 --gateway=...), "
                    "or leave its ip empty for DHCP")
    boot, kernel, initrd = boot_mode(inst)
    be = inst.be
    return Request(
        hostnames=(name,), image=image.name, memory=int(be.get("maxmem") or be.get("memory") or Request.memory),
        vcpus=int(be.get("vcpus") or 1), type="pv", boot=boot, kernel=kernel, initrd=initrd,
        storage=Storage("given", disks=tuple(disks)), dhcp=not ip,
        ips=(f"{ip}/{prefix}" if ip and prefix else ip,) if ip else (), gateway=nic.gateway if nic else "",
        nameservers=" ".join(params.split(params.value(inst.osp, "nameservers"))),
        mac=nic.mac if nic and nic.mac else "", bridge=(nic.bridge or nic.link if nic else "") or Request.bridge,
        fixups_skip=tuple(params.split(params.value(inst.osp, "skip_fixups"))) + skip,
        said=Said(ENV, ("the instance's maxmem", "give it -B maxmem={}M or more")),
    )


def plan_for(inst: Instance, image: Image, tree: survey.Survey | None) -> Plan:
    """The instance's VM as planned (rename reuses it for the hostname fixup)."""
    return planner.make_plan(request_for(inst, image, tree), image, tree)


def _image(inst: Instance, paths, say) -> Image:
    osp = inst.osp
    name = inst.variant or osp.get("image", "")
    if not name:
        raise Fatal(f"no image for instance {inst.name}: the OS has no variant and no image parameter",
                    f"{HINT}, or -O image=NAME")
    return source.select(name, osp.get("server"), params.split(osp.get("overrides", "")), osp.get("ssh_user"),
                         inst.name, paths, say, prog="gnt-instance add -o systemimager+IMAGE")


def install(inst: Instance, image: Image, rep: Reporter, s, skip: tuple[str, ...] = (),
            identity_dir: str | None = None) -> VmRecord:
    """The image onto the instance's disks: si-xen's install steps, journaled (a crash's
    mounts are undone by the next run for this instance); ``identity_dir``: a reinstall's kept identity."""
    req = request_for(inst, image, survey.survey(image.path), skip)
    return service.install_onto(req, image, s, rep, f"ganeti-{req.hostnames[0]}.log", identity_dir=identity_dir)


def create(inst: Instance, rep: Reporter) -> None:
    s = settings(inst.variant or inst.osp.get("image"))
    image = _image(inst, s.paths, rep.say)
    what = "Reinstalling" if inst.reinstall else "Installing"
    kept = carry_identity(inst, s, rep) if inst.reinstall and params.value(inst.osp, "identity") == "keep" else None
    rep.say(f"{what} {inst.name} from image '{image.name}' ({image.os.pretty}) on {', '.join(d.path for d in inst.disks)}")
    rec = install(inst, image, rep, s, identity_dir=kept)
    if kept:
        shutil.rmtree(kept)  # installed: disk 0 holds it again
    rep.say(f"{inst.name}: {image.name} installed in {rec.seconds} s, boots by {rec.boot}")


def carry_identity(inst: Instance, s, rep: Reporter) -> str | None:
    """A reinstall's identity, kept under state_dir/ganeti/carry/INSTANCE until the install is done:
    a copy saved there by a reinstall that did not finish comes first (disk 0 may hold a
    half-made filesystem by now), else it is read from disk 0, read-only (carry.py)."""
    from .. import carry
    from ..storage.mount import RO_OPTS

    saved = carry.carry_dir(s.paths["state_dir"], inst.name)
    if os.path.isdir(saved):
        rep.say(f"Keeping {inst.name}'s identity as an earlier reinstall saved it ({saved})")
        return saved
    d0 = inst.disks[0] if inst.disks else None
    kind = fs_type(d0.path) if d0 else ""
    if kind not in RO_OPTS:
        rep.warn(f"disk 0 of {inst.name} has no filesystem si-xen reads ({kind or 'none'}): it gets a fresh identity")
        return None
    tmp = f"{saved}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp, mode=0o700)
    got = carry.read_disk(inst.name, d0.path, kind, tmp)
    if not got:
        shutil.rmtree(tmp)
        rep.warn(f"disk 0 of {inst.name} holds no SSH host keys or machine-id: it gets a fresh identity")
        return None
    os.rename(tmp, saved)  # whole or not at all: a crash before leaves only the .new
    rep.say(f"Keeping {inst.name}'s identity (identity=keep): {', '.join('/' + p for p in got)}")
    return saved


# --- export / import: one disk per call, on stdout / stdin --------------------------------
def fs_type(path: str) -> str:
    cp = proc.run(["blkid", "-o", "value", "-s", "TYPE", path], ok=(0, 2))
    return cp.stdout.strip()


class _Mounted:
    """A disk mounted on a private temporary directory, undone on exit."""

    def __init__(self, path: str, fs: str, ro: bool):
        self.path, self.fs, self.ro = path, fs, ro

    def __enter__(self) -> str:
        self.dir = tempfile.mkdtemp(prefix="si-xen-ganeti.")
        loop = [] if stat.S_ISBLK(os.stat(self.path).st_mode) else ["loop"]
        opts = ",".join(["ro" if self.ro else "rw", *loop, *(["nouuid"] if self.fs == "xfs" else [])])
        try:
            proc.run(["mount", "-t", self.fs, "-o", opts, self.path, self.dir])
        except BaseException:
            os.rmdir(self.dir)
            raise
        return self.dir

    def __exit__(self, *exc) -> None:
        proc.run(["umount", self.dir])
        os.rmdir(self.dir)


def export(env: dict[str, str], inst: Instance, out=None) -> None:
    """Disk EXPORT_INDEX on stdout: a filesystem as a tar of its tree (any filesystem type),
    swap as nothing, anything else raw. Its size goes to EXP_SIZE_FD when Ganeti asks."""
    out = out or sys.stdout.buffer
    path = env.get("EXPORT_DEVICE") or env.get("EXPORT_DISK_PATH") or ""
    if not path:
        raise Fatal("EXPORT_DEVICE is not set", "run this script from gnt-backup export")
    kind = fs_type(path)
    if kind == "swap":
        _size(env, 0)
        return
    if kind not in ("ext2", "ext3", "ext4", "xfs", "btrfs"):
        _size(env, size_mib(path) * 1024 * 1024)
        with open(path, "rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)
        return
    with _Mounted(path, kind, ro=True) as mnt:
        st = os.statvfs(mnt)
        _size(env, (st.f_blocks - st.f_bfree) * st.f_frsize)
        out.flush()
        proc.run(["tar", *TAR_FLAGS, "--one-file-system", "-C", mnt, "-cf", "-", "."], stdout=out)


def _size(env: dict[str, str], n: int) -> None:
    fd = env.get("EXP_SIZE_FD")
    if fd and fd.isdigit():
        os.write(int(fd), f"{n}\n".encode())


def import_(env: dict[str, str], inst: Instance, rep: Reporter, inp=None) -> None:
    """Disk IMPORT_INDEX from stdin, as export wrote it. Disk 0's tar becomes a tree that
    si-xen installs like an image (a fresh filesystem, fixups for this instance's name, NICs
    and disks, its bootloader); the guest keeps its identity (host keys, machine-id)."""
    inp = inp or sys.stdin.buffer
    index = int(env.get("IMPORT_INDEX", "0") or 0)
    path = env.get("IMPORT_DEVICE") or env.get("IMPORT_DISK_PATH") or ""
    if not path:
        raise Fatal("IMPORT_DEVICE is not set", "run this script from gnt-backup import")
    if index == swap_index(inst):
        with open(os.devnull, "wb") as sink:
            shutil.copyfileobj(inp, sink, 1 << 20)
        proc.run(["mkswap", path])
        return
    if index != 0:
        with open(path, "r+b") as f:
            shutil.copyfileobj(inp, f, 1 << 20)
        return
    s = settings(inst.variant or inst.osp.get("image"))
    os.makedirs(s.paths["state_dir"], exist_ok=True)
    tree = tempfile.mkdtemp(prefix=f"import-{inst.name}.", dir=s.paths["state_dir"])
    try:
        rep.say(f"Unpacking the export of {inst.name} (disk 0) into {tree}")
        proc.run(["tar", *TAR_FLAGS, "-C", tree, "-xf", "-"], stdin=inp)
        if not os.path.isdir(os.path.join(tree, "etc")):
            raise Fatal(f"the export of {inst.name} disk 0 holds no root tree (no etc/)", "import an export of this OS")
        image = open_at(inst.variant or inst.osp.get("image") or "import", tree)
        rec = install(inst, image, rep, s, skip=("identity",))
        rep.say(f"{inst.name}: imported in {rec.seconds} s, boots by {rec.boot}")
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def rename(inst: Instance, rep: Reporter) -> None:
    """The hostname fixups again, for the new name, on the installed disk 0."""
    d0 = inst.disks[0] if inst.disks else None
    if d0 is None:
        raise Fatal(f"instance {inst.name} has no disks", "nothing to rename")
    kind = fs_type(d0.path)
    if not kind:
        raise Fatal(f"disk 0 of {inst.name} ({d0.path}) has no filesystem", "reinstall it: gnt-instance reinstall")
    with _Mounted(d0.path, kind, ro=False) as root:
        image = open_at(inst.variant or inst.osp.get("image") or "instance", root)
        plan = plan_for(inst, image, None)
        rep.say(f"Renaming {inst.old_name or '?'} to {inst.name} in {d0.path}")
        run_all(root, spec_from_plan(plan), only=["hostname"], log=rep.fixup_line, osinfo=image.os)
