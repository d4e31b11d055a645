"""The Xen toolstack: start a domain from its config, attach its console, list, shut down and
destroy domains (the autostart link is made.link_autostart's).

``xl`` is the toolstack; ``xm`` only where ``xl`` is absent (Xen < 4.1 dom0s). ``libvirt``
(libvirt.py: virsh on libvirtd's libxl driver) only when asked for by name: ``auto`` never picks
it, since a host may run libvirtd beside VMs managed with xl, and a VM registered in both would be
started twice (xendomains' /etc/xen/auto and libvirt's autostart). ``toolstack = libvirt`` in
xen.conf (or --toolstack libvirt) is the admin saying this host's VMs are libvirt's.
"""

from __future__ import annotations

import os
import re
from time import monotonic, sleep  # by name: a test fakes toolstack's clock, never the time module's

from .. import proc
from ..errors import Fatal
from . import libvirt, run


def hypervisor_running() -> bool:
    try:
        with open("/sys/hypervisor/type") as f:
            if f.read().strip() == "xen":
                return True
    except OSError:
        pass
    return os.path.exists("/proc/xen/capabilities") and os.path.exists("/dev/xen/privcmd")


class Toolstack:
    def __init__(self, name: str, path: str):
        self.name, self.path = name, path

    def create(self, cfg: str, made, name: str | None = None) -> None:
        """``xl create``: the domain exists once it returns 0, and ``made(signum)`` is called
        before any handler of the caller's runs again (run.create says how signals meanwhile go)."""
        run.create(self.create_argv(cfg, name), made)

    def console(self, name: str) -> tuple[int, int | None]:
        """Attach our terminal to ``name``'s console until it ends (run.console)."""
        return run.console(self.console_argv(name))

    @property
    def start_cmd(self) -> str:
        return f"{self.name} create"

    def shown(self, *args: str) -> str:
        """The command an admin types for ``args`` (``xl console web01``), for messages."""
        return " ".join((self.name, *args))

    def start_shown(self, name: str, cfg: str) -> str:
        """The command an admin types to start the VM, for a fix line (``xl create CFG``)."""
        return self.shown("create", cfg)

    def stop_shown(self, name: str) -> str:
        """The command an admin types to shut the VM down cleanly, for a fix line."""
        return self.shown("shutdown", "-w", name)

    def create_argv(self, cfg: str, name: str | None) -> list[str]:
        return [self.path, "create", cfg]

    def console_argv(self, name: str) -> list[str]:
        return [self.path, "console", name]

    def domains(self) -> dict[str, str]:
        """Running domains: name -> state flags (``r-----``)."""
        out = proc.run([self.path, "list"]).stdout
        doms = {}
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 5 and re.fullmatch(r"\d+", parts[1]):
                doms[parts[0]] = parts[4]
        return doms

    def shutdown(self, name: str, wait: float = 120) -> None:
        """Shut the domain down; destroy it if it does not go. Gone is gone, however it went.
        (An update uses :meth:`stop`, which never destroys.)"""
        proc.run([self.path, "shutdown", "-w", name], timeout=wait, ok=(0, 1))
        self.destroy(name)

    def stop(self, name: str, timeout: float = 120) -> bool:
        """A clean shutdown within ``timeout`` seconds: True once the domain is gone. Never
        destroys it (an update must not pull the plug): on False it keeps running or shutting down."""
        # -w returns once the guest has shut down; xl's own process for the domain destroys it
        # (on_poweroff) a moment later, and until then xl list still shows it
        return run.stop([self.path, "shutdown", "-w", name], self.domains, name, timeout, monotonic, sleep)

    def destroy(self, name: str) -> None:
        # a dying domain may take a while to hand its memory back on a loaded host
        deadline = monotonic() + 120
        while name in self.domains():
            # a domain on its way out makes destroy fail ("unable to find domain info")
            proc.run([self.path, "destroy", name], ok=(0, 1, 255))
            if monotonic() > deadline:
                raise Fatal(f"domain '{name}' does not go away", f"check with {self.name} list, then retry")
            sleep(0.5)


def find(choice: str = "auto") -> Toolstack | libvirt.Libvirt | None:
    if choice == "libvirt":
        return libvirt.find_virsh()
    names = ("xl", "xm") if choice == "auto" else (choice,)
    for n in names:
        p = proc.which(n)
        if p:
            return Toolstack(n, p)
    return None


def for_messages(choice: str | None = "auto") -> Toolstack | libvirt.Libvirt:
    """The toolstack a VM's fix lines name (shown, start_shown, stop_shown): the one its record
    chose, found on this host, else by name (a message must not say ``libvirt shutdown``, and
    must name a command even where the tool is not installed here)."""
    choice = choice or "auto"
    found = find(choice)
    if found is not None:
        return found
    if choice == "libvirt":
        return libvirt.Libvirt("virsh")
    n = "xm" if choice == "xm" else "xl"
    return Toolstack(n, n)


def stop_cleanly(choice: str, name: str, timeout: float, say, again: str) -> None:
    """A running VM shut down before si-xen changes it (an update, a rebuild): a clean shutdown
    within ``timeout``, never a destroy; one Fatal if it does not stop (``again``: what to run after)."""
    ts = require_running(choice)
    say(f"Shutting {name} down ({ts.stop_shown(name)}, {timeout:.0f} s at most)")
    if not ts.stop(name, timeout):
        raise Fatal(f"VM '{name}' did not shut down within {timeout:.0f} s (its shutdown was asked for; it was never "
                    "destroyed)", f"see why it does not stop, or give a longer --timeout, then run {again}")


def require_libvirt() -> libvirt.Libvirt:
    """``--toolstack libvirt``: virsh here and libvirtd answering on the Xen URI, or one Fatal
    before anything is made."""
    ts = libvirt.find_virsh()
    if ts is None:
        raise Fatal("--toolstack libvirt needs virsh, which is not installed", "install libvirt-clients; " + libvirt.FIX)
    ts.reachable()
    return ts


def require_running(choice: str) -> Toolstack:
    ts = find(choice)
    if ts is None:
        raise Fatal(f"no Xen toolstack ({'xl or xm' if choice == 'auto' else choice}) found",
                    "install libvirt-clients or drop --start" if choice == "libvirt" else "install xen-utils or drop --start")
    if not hypervisor_running():
        raise Fatal("Xen is not running on this machine, so the VM cannot be started", "boot the dom0 under Xen or drop --start")
    return ts
