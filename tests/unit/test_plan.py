import pytest

from si_xen.errors import Fatal
from si_xen.plan import Disk, check_hostname, check_mac, check_network, hook_env, number_disks, stable_mac


@pytest.mark.parametrize("name", ["web01", "web-01.example.org", "a", "x" * 63])
def test_good_hostnames(name):
    assert check_hostname(name) == name


@pytest.mark.parametrize("name", ["", "-web", "web-", "we_b", "web..org", "x" * 64, "a/b", "héllo"])
def test_bad_hostnames(name):
    with pytest.raises(Fatal, match="RFC 1123"):
        check_hostname(name)


def test_stable_mac_is_stable_unicast_and_xen_oui():
    a, b = stable_mac("web01"), stable_mac("web01")
    assert a == b != stable_mac("web02")
    assert a.startswith("00:16:3e:") and int(a.split(":")[3], 16) < 0x80
    check_mac(a)


@pytest.mark.parametrize("mac", ["00:16:3e:12:34", "zz:16:3e:12:34:56", "01:16:3e:12:34:56"])
def test_bad_macs(mac):
    with pytest.raises(Fatal):
        check_mac(mac)


def net(**kw):
    args = dict(dhcp=False, ips=(), netmask="", gateway="", broadcast="", nameservers=(), mac="m", bridge="xenbr0")
    args.update(kw)
    return check_network(**args)


def test_static_network_with_prefix_or_netmask():
    assert net(ips=("10.0.0.5/24",), gateway="10.0.0.1").netmask == "255.255.255.0"
    n = net(ips=("10.0.0.5", "10.0.0.6"), netmask="255.255.0.0", gateway="10.0.200.1")
    assert n.ips == ("10.0.0.5", "10.0.0.6") and n.netmask == "255.255.0.0"


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(dhcp=True, ips=("10.0.0.5",)), "both --dhcp and --ip"),
        (dict(), "no network"),
        (dict(ips=("10.0.0.500",), netmask="24"), "invalid IP address"),
        (dict(ips=("10.0.0.5",)), "without a netmask"),
        (dict(ips=("10.0.0.5",), netmask="255.0.255.0"), "invalid netmask"),
        (dict(ips=("10.0.0.5",), netmask="24", gateway="10.9.9.1"), "not in 10.0.0.5/24"),
        (dict(dhcp=True, nameservers=("dns",)), "invalid nameserver"),
        (dict(dhcp=True, bridge="a bridge too far"), "invalid bridge"),
    ],
)
def test_bad_networks(kw, msg):
    with pytest.raises(Fatal, match=msg):
        net(**kw)


def test_xen_tools_numbering_swap_first_then_root_then_deeper():
    disks = number_disks([Disk("disk", "/", "ext4", 2048, "d"), Disk("var", "/var", "ext4", 512, "d"),
                          Disk("swap", "", "swap", 128, "sw")])
    assert [(d.vdev, d.mountpoint) for d in disks] == [("xvda1", ""), ("xvda2", "/"), ("xvda3", "/var")]


def test_hook_env_speaks_xen_tools(tmp_path):
    from si_xen.plan import Network, Plan

    disks = number_disks([Disk("disk", "/", "ext4", 2048, "errors=remount-ro", target="/x/disk.img"),
                          Disk("swap", "", "swap", 128, "sw", target="/x/swap.img")])
    plan = Plan(hostname="vm", image_name="img", image_path="/images/img", os=None, memory=512, vcpus=2,
                type="pv", boot="pygrub", disks=tuple(disks), storage="dir", storage_root="/x",
                net=Network(False, ("10.0.0.5", "10.0.0.6"), "255.255.255.0", "10.0.0.1", "", ("1.1.1.1", "8.8.8.8"),
                            "00:16:3e:00:00:01"), cfg_path="/etc/xen/vm.cfg")
    env = hook_env(plan)
    assert env["hostname"] == "vm" and env["dhcp"] == "0" and env["ip_count"] == "2"
    assert (env["ip1"], env["ip2"]) == ("10.0.0.5", "10.0.0.6")
    assert env["nameserver"] == "1.1.1.1 8.8.8.8" and env["pygrub"] == "1"
    assert env["NUMPARTITIONS"] == "2"
    assert env["PARTITION1"] == "swap:128M:swap:::file:/x/swap.img"
    assert env["PARTITION2"] == "disk:2048M:ext4:/:errors=remount-ro:file:/x/disk.img"
    assert env["install_source"] == "/images/img" and env["disk_device"] == "xvda"
