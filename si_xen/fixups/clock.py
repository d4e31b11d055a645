"""hwclock: a PV guest has no RTC, and hwclock at boot hangs or fails (the seed article)."""

from __future__ import annotations

import re

from si_xen.fixups.base import Ctx, fixup, lib_dirs

# names are generic across families: whatever of these an image carries is disabled
SYSV_SCRIPTS = re.compile(r"^[SK]\d\d(hwclock.*\.sh|hwclockfirst\.sh|boot\.clock)$")
RC_DIRS = ("etc/rcS.d", "etc/rc.d/rcS.d", "etc/init.d/boot.d") + tuple(
    f"{p}rc{n}.d" for p in ("etc/", "etc/rc.d/", "etc/init.d/") for n in range(7)
)
UPSTART_JOBS = ("hwclock.conf", "hwclock-save.conf")
SYSTEMD_UNITS = ("hwclock.service", "hwclock-save.service", "hwclock-load.service")
RTC_RULE = re.compile(r'^(?!\s*#)(.*KERNEL=="rtc[0-9]*".*(hwclock|set_hwclock).*)$', re.M)


@fixup("hwclock", 15, "disable-hwclock", watches=("etc/rc*.d/*hwclock*", "etc/init/hwclock*",
                                                "{,usr/}lib/systemd/system/hwclock*", "**/udev/rules.d/*hwclock*"))
def disable_hwclock(ctx: Ctx) -> None:
    """Disable hardware-clock access: a Xen PV guest has no RTC.

    Removes sysvinit hwclock*.sh / boot.clock start-stop links, renames upstart hwclock jobs
    to *.disabled, masks systemd hwclock units the image ships, and comments out the udev
    RTC rule (85-hwclock.rules, KERNEL=="rtc" ... set_hwclock) - the seed article's fix.
    """
    g = ctx.guest
    for d in RC_DIRS:
        for name in g.listdir(d):
            if SYSV_SCRIPTS.match(name):
                ctx.remove(f"{d}/{name}")
    for job in UPSTART_JOBS:
        path = f"etc/init/{job}"
        if g.isfile(path) and not g.islink(path):
            ctx.write(f"{path}.disabled", g.read_text(path) or "")
            ctx.remove(path)
    shipped = {u for d in lib_dirs(g, "systemd/system") for u in g.listdir(d)}
    for unit in SYSTEMD_UNITS:
        if unit in shipped:
            ctx.link("/dev/null", f"etc/systemd/system/{unit}")
    _udev_rule(ctx)


def _udev_rule(ctx: Ctx) -> None:
    g = ctx.guest
    comment = lambda text: RTC_RULE.sub(r"#\1", text)  # noqa: E731
    for d in ("etc/udev/rules.d",) + tuple(f"{x}/rules.d" for x in lib_dirs(g, "udev")):
        for path in g.glob(d, "*hwclock*.rules"):
            text = g.read_text(path) or ""
            if not RTC_RULE.search(text):
                continue
            if path.startswith("etc/"):
                ctx.edit(path, comment)
            else:  # a packaged rule: shadow it from /etc so upgrades keep the fix
                override = f"etc/udev/rules.d/{path.rsplit('/', 1)[1]}"
                if not g.exists(override):
                    ctx.write(override, comment(text))
