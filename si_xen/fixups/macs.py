"""MAC-bound network state: a VM has a new MAC, so every binding to the old one must go.

Left in place, udev renames the vif to eth1 and the eth0 config never applies.
"""

from __future__ import annotations

import re

from si_xen.fixups import aside
from si_xen.fixups.base import Ctx, fixup

# the three historic names of udev's persistent-net rules, plus SUSE 10.x's own
PERSISTENT_NET = ("70-persistent-net.rules", "z25_persistent-net.rules", "30-net_persistent_names.rules")


@fixup("macs", 35, "forget-macs", watches=("etc/udev/rules.d/*persistent*", "etc/systemd/network/*.link"))
def forget_macs(ctx: Ctx) -> None:
    """Remove state bound to the golden client's MAC addresses.

    udev persistent-net rules (70-persistent-net.rules, z25_persistent-net.rules,
    30-net_persistent_names.rules; udev writes them anew) go; systemd .link files matching a
    MACAddress= are kept aside under /var/lib/si-xen/golden/. A MAC inside a network stack's
    config (HWADDR=, LLADDR=, mac-address=, netplan match:) goes with that whole config,
    which the network fixup keeps aside.
    """
    g = ctx.guest
    for name in PERSISTENT_NET:
        ctx.remove(f"etc/udev/rules.d/{name}")
    for path in g.glob("etc/systemd/network", "*.link"):
        if re.search(r"(?m)^\s*MACAddress\s*=", g.read_text(path) or ""):
            aside.keep(ctx, path)
