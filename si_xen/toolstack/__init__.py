"""Activation: register the domain with the Xen toolstack, autostart it, start it.

``xl`` is the toolstack; ``xm`` only where ``xl`` is absent (Xen < 4.1 dom0s).
"""

from __future__ import annotations

import os
import re
from time import monotonic, sleep  # by name: a test fakes toolstack's clock, never the time module's

from .. import proc
from ..errors import Fatal
from ..made import File


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

    def create(self, cfg: str, console: bool = False) -> None:
        if console:
            # The console takes over the terminal until the admin detaches (Ctrl-]).
            proc.run([self.path, "create", "-c", cfg], capture=False)
        else:
            proc.run([self.path, "create", cfg])

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
        """Shut the domain down; destroy it if it does not go. Gone is gone, however it went."""
        proc.run([self.path, "shutdown", "-w", name], timeout=wait, ok=(0, 1))
        self.destroy(name)

    def destroy(self, name: str) -> None:
        # a dying domain may take a while to hand its memory back on a loaded host
        deadline = monotonic() + 120
        while name in self.domains():
            # a domain on its way out makes destroy fail ("unable to find domain info")
            proc.run([self.path, "destroy", name], ok=(0, 1, 255))
            if monotonic() > deadline:
                raise Fatal(f"domain '{name}' does not go away", f"check with {self.name} list, then retry")
            sleep(0.5)


def find(choice: str = "auto") -> Toolstack | None:
    names = ("xl", "xm") if choice == "auto" else (choice,)
    for n in names:
        p = proc.which(n)
        if p:
            return Toolstack(n, p)
    return None


def require_running(choice: str) -> Toolstack:
    ts = find(choice)
    if ts is None:
        raise Fatal(f"no Xen toolstack ({'xl or xm' if choice == 'auto' else choice}) found", "install xen-utils or drop --start")
    if not hypervisor_running():
        raise Fatal("Xen is not running on this machine, so the VM cannot be started", "boot the dom0 under Xen or drop --start")
    return ts


def link_autostart(cfg: str, journal) -> str:
    """xendomains starts what is linked in /etc/xen/auto: the auto/ beside the config dir."""
    auto_dir = os.path.join(os.path.dirname(cfg), "auto")
    journal.makedirs(auto_dir)
    link = os.path.join(auto_dir, os.path.basename(cfg))
    if os.path.lexists(link):
        os.unlink(link)
    journal.made(File(link), os.symlink, cfg, link)
    return link
