"""console: exactly one getty, on the Xen console (hvc0), and the kernel told to use it."""

from __future__ import annotations

import re

from si_xen.fixups.base import Ctx, fixup, lib_dirs
from si_xen.fixups.bootfiles import edit_cmdlines, set_arg

_GETTY = re.compile(r"^(?!\s*#)([^:\n]*):([^:\n]*):(respawn|once)?:([^\n]*getty[^\n]*)$", re.M)
_TTY = re.compile(r"\b(tty\d+|ttyS\d+|xvc\d+|hvc\d+|console)\b")


def inittab(text: str, dev: str) -> str:
    """Keep one getty line (the first numbered one) on ``dev``; comment out the others."""
    lines = text.split("\n")
    gettys = [i for i, ln in enumerate(lines) if _GETTY.match(ln)]
    if not gettys:
        return text
    on_dev = [i for i in gettys if re.search(rf"\b{dev}\b", lines[i])]
    numbered = [i for i in gettys if lines[i].split(":", 1)[0].isdigit()]
    keep = (on_dev or numbered or gettys)[0]
    for i in gettys:
        if i == keep:
            lines[i] = _TTY.sub(dev, lines[i], count=1) if _TTY.search(lines[i]) else lines[i] + f" {dev}"
        else:
            lines[i] = "#" + lines[i]
    return "\n".join(lines)


def _upstart(ctx: Ctx, d: str, ext: str, dev: str) -> None:
    """Upstart getty jobs: ttyN[.conf] -> one ``dev`` job (what xen-tools' 30-disable-gettys does)."""
    g = ctx.guest
    jobs = [p for p in g.glob(d, f"tty*{ext}") if re.fullmatch(rf"tty\d+{re.escape(ext)}", p.rsplit("/", 1)[1])]
    target = f"{d}/{dev}{ext}"
    if jobs and not g.exists(target):
        model = g.read_text(jobs[0]) or ""
        ctx.write(target, _TTY.sub(dev, model))
    if jobs and g.exists(target):
        for job in jobs:
            ctx.remove(job)


def _systemd(ctx: Ctx, dev: str) -> None:
    g = ctx.guest
    unit = next((f"/{d}/serial-getty@.service" for d in lib_dirs(g, "systemd/system")
                 if g.exists(f"{d}/serial-getty@.service")), None)
    if unit is None:
        ctx.warn("console: no serial-getty@.service in the image; relying on console= only")
        return
    wants = "etc/systemd/system/getty.target.wants"
    ctx.link(unit, f"{wants}/serial-getty@{dev}.service")
    # The getty waits for udev to announce the console, and systemd gives a device 90 s: a guest
    # slowed down that much (an overloaded host; a PVH guest under QEMU's TCG took 330 s to boot)
    # came up with no getty and no way in. The kernel's console always comes: wait for it.
    ctx.write(f"etc/systemd/system/dev-{dev}.device.d/si-xen-console.conf",
              "# si-xen: the Xen console always comes; a slow boot must not lose its getty\n"
              "[Unit]\nJobRunningTimeoutSec=infinity\n")
    for name in g.listdir(wants):  # one getty only: drop the VGA ttys a PV guest cannot show
        if re.fullmatch(r"getty@tty\d+\.service", name):
            ctx.remove(f"{wants}/{name}")
    # Debian's getty-static starts getty@tty2-6 in images without dbus (a minimal golden client);
    # the distro enables it in /lib, so it is masked.
    if any(g.exists(f"{d}/getty-static.service") for d in lib_dirs(g, "systemd/system")):
        ctx.link("/dev/null", "etc/systemd/system/getty-static.service")


@fixup("console", 30, "disable-gettys", watches=(
    "etc/inittab", "etc/init/tty*", "etc/event.d/*", "etc/sysconfig/init", "**/serial-getty@.service",
    "etc/systemd/system/getty.target.wants/*", "etc/securetty", "boot/**", "etc/default/grub"))
def console(ctx: Ctx) -> None:
    """One getty on the Xen console (serial_device, default hvc0) and console=hvc0.

    sysvinit inittab: the first getty moved to hvc0, the others (tty2-6, ttyS) commented
    out; upstart /etc/event.d and /etc/init ttyN jobs replaced by one hvc0 job (CentOS 6:
    ACTIVE_CONSOLES); systemd: serial-getty@hvc0 enabled, getty@ttyN dropped, getty-static masked, no time limit on
    waiting for hvc0 (systemd's 90 s device timeout left slow boots without a getty); hvc0 added to
    /etc/securetty; console=hvc0 on the kernel command line of every bootloader file.
    """
    dev, g = ctx.s.serial, ctx.guest
    ctx.edit("etc/inittab", lambda t: inittab(t, dev))
    _upstart(ctx, "etc/event.d", "", dev)
    _upstart(ctx, "etc/init", ".conf", dev)
    ctx.edit("etc/sysconfig/init", lambda t: re.sub(r"(?m)^ACTIVE_CONSOLES=.*$", f"ACTIVE_CONSOLES=/dev/{dev}", t))
    if ctx.os.init == "systemd":
        _systemd(ctx, dev)
    if g.isfile("etc/securetty"):
        ctx.edit("etc/securetty", lambda t: t if re.search(rf"(?m)^{dev}$", t) else
                 t + ("" if t.endswith("\n") or not t else "\n") + f"{dev}\n")
    edit_cmdlines(ctx, lambda args: set_arg(args, "console", dev))
