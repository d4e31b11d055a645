"""The one network stack a golden client runs gets the VM's config; every other stack's golden
configs and enablement links are kept aside (with a manifest), never deleted or left claiming the NIC."""

import os

import pytest

from si_xen.distros import detect
from si_xen.fixups import run_all
from si_xen.guestfs import Guest
from tests.unit.fixups.conftest import STATIC
from tests.unit.fixups.trees import IFACES, TREES, L, snapshot, write

WANTS = "etc/systemd/system/multi-user.target.wants"
KEPT = "var/lib/si-xen/golden"
LO_ONLY = "auto lo\niface lo inet loopback\n"


def unit(name: str, *wants: str) -> dict:
    """A unit file and its enablement links (none: installed, not enabled)."""
    link = L(f"/lib/systemd/system/{name}")
    return {f"usr/lib/systemd/system/{name}": "[Unit]\n", **{f"etc/systemd/system/{w}/{name}": link for w in wants}}


NETWORKING = unit("networking.service", "multi-user.target.wants", "network-online.target.wants")
NM = {**unit("NetworkManager.service", "multi-user.target.wants"), "usr/sbin/NetworkManager": "",
      "etc/systemd/system/dbus-org.freedesktop.NetworkManager.service": L("/lib/systemd/system/NetworkManager.service")}
NM_OFF = {**unit("NetworkManager.service"), "usr/sbin/NetworkManager": ""}
NETWORKD = {**unit("systemd-networkd.service", "multi-user.target.wants"), "usr/lib/systemd/systemd-networkd": ""}
KEYFILE = ("[connection]\nid=golden\nuuid=0e3f1c1a-5c1e-4a4e-9f77-2b0d6a1d2c3e\ntype=ethernet\ninterface-name=ens3\n\n"
           "[ethernet]\nmac-address=52:54:00:12:34:56\n\n[ipv4]\naddress1=10.9.8.7/24\nmethod=manual\n")
NM_GOLDEN = "etc/NetworkManager/system-connections/golden.nmconnection"
NETWORKD_GOLDEN = ("etc/systemd/network/10-golden.network",
                   "[Match]\nMACAddress=52:54:00:12:34:56\n\n[Network]\nAddress=10.9.8.7/24\nGateway=10.9.8.1\n")
NETPLAN_GOLDEN = "etc/netplan/01-golden.yaml"


def netplan_yaml(renderer: str) -> str:
    return f"network:\n  version: 2\n  renderer: {renderer}\n  ethernets:\n    ens3:\n      addresses: [10.9.8.7/24]\n"


def read(root, path):
    with open(os.path.join(root, path)) as f:
        return f.read()


def exists(root, path):
    return os.path.lexists(os.path.join(root, path))


def deploy(tmp_path, base: str, extra: dict) -> tuple[str, list[str]]:
    """The golden tree, then every fixup with the static spec (192.168.50.10/24 via .1)."""
    root = write(tmp_path / "g", {**TREES[base], **extra})
    msgs: list[str] = []
    run_all(root, STATIC, log=msgs.append)
    return root, msgs


def assert_kept(root, gpath: str, text: str, rewritten=False):
    """Gone from its place (or ``rewritten`` there), kept whole under KEPT and in the manifest."""
    assert rewritten or not exists(root, gpath)
    assert read(root, f"{KEPT}/{gpath}") == text
    assert f"file\t/{gpath}\t/{KEPT}/{gpath}\n" in read(root, f"{KEPT}/MANIFEST")


def assert_disabled(root, links: dict):
    for path, link in links.items():
        if isinstance(link, L) and "/etc/systemd/system/" in f"/{path}":
            assert not exists(root, path), path
            assert f"link\t/{path}\t{link.target}\n" in read(root, f"{KEPT}/MANIFEST")


def assert_enabled(root, links: dict):
    for path, link in links.items():
        if isinstance(link, L):
            assert os.readlink(os.path.join(root, path)) == link.target, path


@pytest.mark.parametrize("ifaces", [LO_ONLY, IFACES], ids=["interfaces-lo", "interfaces-eth0"])
def test_networkmanager_golden_client(tmp_path, ifaces):
    root, msgs = deploy(tmp_path, "debian12", {**NETWORKING, **NM, NM_GOLDEN: KEYFILE, "etc/network/interfaces": ifaces})
    assert detect(Guest(root)).network == "nm-keyfile"
    ours = read(root, "etc/NetworkManager/system-connections/si-xen-enX0.nmconnection")
    assert "interface-name=enX0" in ours and "address1=192.168.50.10/24,192.168.50.1" in ours
    assert_kept(root, NM_GOLDEN, KEYFILE)  # with its mac-address: intact, as the golden client had it
    assert os.listdir(os.path.join(root, "etc/NetworkManager/system-connections")) == ["si-xen-enX0.nmconnection"]
    assert_enabled(root, NM)
    assert_disabled(root, NETWORKING)
    # NM's ifupdown plugin leaves alone a NIC /etc/network/interfaces names: loopback only there
    assert "iface lo inet loopback" in read(root, "etc/network/interfaces")
    assert "eth0" not in read(root, "etc/network/interfaces") and "enX0" not in read(root, "etc/network/interfaces")
    if ifaces == IFACES:
        assert read(root, f"{KEPT}/etc/network/interfaces") == IFACES
    assert not any(m.startswith("WARNING") for m in msgs)
    assert not exists(root, "etc/sysconfig")  # Red Hat's file has no place on Debian
    before = snapshot(root)
    assert [c for c in run_all(root, STATIC, log=msgs.append) if c[1]] == []  # a second run: nothing
    assert snapshot(root) == before


def test_systemd_networkd_golden_client(tmp_path):
    root, _ = deploy(tmp_path, "debian12", {**NETWORKING, **NETWORKD, NETWORKD_GOLDEN[0]: NETWORKD_GOLDEN[1],
                                            "etc/network/interfaces": LO_ONLY})
    ours = read(root, "etc/systemd/network/10-si-xen-enX0.network")
    assert "Name=enX0" in ours and "Address=192.168.50.10/24" in ours
    assert_kept(root, *NETWORKD_GOLDEN)  # the macs fixup no longer rewrites its [Match] first
    assert_enabled(root, NETWORKD)
    assert_disabled(root, NETWORKING)
    assert not exists(root, "etc/NetworkManager/system-connections")


@pytest.mark.parametrize(("renderer", "on", "off"), [("NetworkManager", NM, NETWORKD), ("networkd", NETWORKD, NM)])
def test_netplan_golden_client_keeps_its_renderer(tmp_path, renderer, on, off):
    extra = {**on, **off, NETPLAN_GOLDEN: netplan_yaml(renderer), NM_GOLDEN: KEYFILE}
    o = detect(Guest(write(tmp_path / "before", {**TREES["ubuntu2404"], **extra})))
    assert (o.network, o.backend, o.nic) == ("netplan", renderer, "enX0")
    root, _ = deploy(tmp_path, "ubuntu2404", extra)
    ours = read(root, "etc/netplan/01-netcfg.yaml")
    assert f"renderer: {renderer}" in ours and "    enX0:" in ours and "192.168.50.10/24" in ours
    assert_kept(root, NETPLAN_GOLDEN, netplan_yaml(renderer))
    assert_kept(root, "etc/netplan/50-cloud-init.yaml", TREES["ubuntu2404"]["etc/netplan/50-cloud-init.yaml"])
    assert_kept(root, NM_GOLDEN, KEYFILE)  # NetworkManager's own keyfile would claim the NIC too
    assert_enabled(root, on)
    assert_disabled(root, off)
    assert (detect(Guest(root)).network, detect(Guest(root)).backend) == ("netplan", renderer)  # so a re-run too


def test_ifupdown_golden_client_leaves_an_idle_networkmanager_alone(tmp_path):
    root, _ = deploy(tmp_path, "debian12", {**NETWORKING, **NM_OFF})
    ifaces = read(root, "etc/network/interfaces")
    assert "iface enX0 inet static" in ifaces and "address 192.168.50.10" in ifaces
    assert_kept(root, "etc/network/interfaces", IFACES, rewritten=True)
    assert_enabled(root, NETWORKING)
    manifest = read(root, f"{KEPT}/MANIFEST")
    assert "\nlink\t" not in manifest  # installed, not enabled, no config: as it was
    assert exists(root, "usr/lib/systemd/system/NetworkManager.service") and exists(root, "usr/sbin/NetworkManager")


def test_redhat_ifcfg_golden_client_with_networkmanager_enabled(tmp_path):
    rc = {"etc/rc.d/init.d/network": "#!/bin/sh\n", "etc/rc.d/rc3.d/S10network": L("../init.d/network")}
    golden = TREES["centos7"]["etc/sysconfig/network-scripts/ifcfg-eth0"]
    root, _ = deploy(tmp_path, "centos7", {**rc, **NM})
    assert detect(Guest(root)).network == "ifcfg"
    ours = read(root, "etc/sysconfig/network-scripts/ifcfg-eth0")
    assert "IPADDR=192.168.50.10" in ours and "HWADDR" not in ours
    assert read(root, f"{KEPT}/etc/sysconfig/network-scripts/ifcfg-eth0") == golden  # HWADDR and all
    assert_enabled(root, rc)
    assert_disabled(root, NM)


def test_macs_leaves_stack_configs_whole_when_network_is_skipped(tmp_path):
    root = write(tmp_path / "g", {**TREES["debian12"], **NM, NM_GOLDEN: KEYFILE})
    run_all(root, STATIC, only="macs", log=lambda m: None)
    assert read(root, NM_GOLDEN) == KEYFILE  # the network fixup keeps it aside whole, or nobody touches it


def test_sysvinit_guest_rc_links_decide_and_are_disabled(tmp_path):
    rc = {"etc/rc.d/rc3.d/S10network": L("../init.d/network"), "etc/rc.d/rc5.d/S10network": L("../init.d/network")}
    nm_rc = {"etc/rc.d/rc3.d/S98NetworkManager": L("../init.d/NetworkManager"),
             "etc/rc.d/rc5.d/S98NetworkManager": L("../init.d/NetworkManager"),
             "etc/rc.d/rc0.d/K02NetworkManager": L("../init.d/NetworkManager")}
    root, _ = deploy(tmp_path, "centos5", {**rc, **nm_rc, "usr/sbin/NetworkManager": ""})
    assert "IPADDR=192.168.50.10" in read(root, "etc/sysconfig/network-scripts/ifcfg-eth0")
    assert_enabled(root, rc)
    for path in ("etc/rc.d/rc3.d/S98NetworkManager", "etc/rc.d/rc5.d/S98NetworkManager"):
        assert not exists(root, path)
        assert f"link\t/{path}\t../init.d/NetworkManager\n" in read(root, f"{KEPT}/MANIFEST")
    assert exists(root, "etc/rc.d/rc0.d/K02NetworkManager")  # a stop link starts nothing
    assert read(root, f"{KEPT}/etc/sysconfig/network") == TREES["centos5"]["etc/sysconfig/network"]  # its GATEWAY=
