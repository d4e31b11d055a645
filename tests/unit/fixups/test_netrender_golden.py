"""Each network renderer's files, byte for byte, against tests/unit/golden/network/.

Regenerate after an intended change with SI_XEN_REGOLD=1 (as the xl.cfg goldens), then
read the diff."""

import os
import stat

import pytest

from si_xen.distros import OSInfo
from si_xen.fixups.base import Ctx
from si_xen.fixups.netrender import RENDERERS
from si_xen.fixups.xentools import spec_from_env
from si_xen.guestfs import Guest

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden", "network")
OS = OSInfo("debian", "debian", "12", "systemd", "Debian GNU/Linux 12 (bookworm)", "enX0", "ifupdown")
STATIC = {"hostname": "vm1.example.org", "ip1": "192.168.50.10", "ip_count": "1", "netmask": "255.255.255.0",
          "gateway": "192.168.50.1", "nameserver": "192.168.50.1 9.9.9.9"}
CASES = {
    "dhcp": {"hostname": "vm1.example.org", "dhcp": "1"},
    "static": STATIC,
    "static-two-ips": {**STATIC, "ip2": "192.168.50.11", "ip_count": "2"},
}
# What the guest has before: networkd's unit, so its enabling link is rendered too.
SEED = {"networkd": {"lib/systemd/system/systemd-networkd.service": "[Unit]\n"}}


def rendered(renderer: str, case: str, root: str) -> str:
    """Every file and link the renderer leaves in an otherwise empty guest, with its mode."""
    seed = SEED.get(renderer, {})
    for path, text in seed.items():
        os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write(text)
    ctx = Ctx(Guest(root), OS, spec_from_env(CASES[case]), log=lambda m: None)
    RENDERERS[renderer](ctx, OS.nic)
    out = []
    for d, dirs, files in sorted(os.walk(root)):
        for name in sorted(dirs + files):
            p = os.path.join(d, name)
            rel = os.path.relpath(p, root)
            if rel in seed or os.path.isdir(p) and not os.path.islink(p):
                continue
            if os.path.islink(p):
                out.append(f"==> {rel} -> {os.readlink(p)} <==\n")
            else:
                with open(p) as f:
                    out.append(f"==> {rel} ({stat.S_IMODE(os.lstat(p).st_mode):04o}) <==\n{f.read()}")
    return "".join(out)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("renderer", sorted(RENDERERS))
def test_matches_golden(tmp_path, renderer, case):
    path = os.path.join(GOLDEN, f"{renderer}-{case}.txt")
    text = rendered(renderer, case, str(tmp_path))
    if os.environ.get("SI_XEN_REGOLD"):
        os.makedirs(GOLDEN, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read()


def test_every_golden_has_its_case():
    want = {f"{r}-{c}.txt" for r in RENDERERS for c in CASES}
    assert set(os.listdir(GOLDEN)) == want, "remove goldens of renderers or cases that are gone"
