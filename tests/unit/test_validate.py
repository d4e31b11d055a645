"""One validator per setting: the same values accepted and refused for the CLI and xen-tools' env."""

import pytest

from si_xen.errors import Fatal
from si_xen.validate import (
    CLI,
    ENV,
    check_address,
    check_bridge,
    check_broadcast,
    check_gateway,
    check_hostname,
    check_mac,
    check_nameservers,
    check_netmask,
    check_network,
)


@pytest.mark.parametrize("name", ["web01", "web-01.example.org", "a", "x" * 63, "1host", ".".join(["a" * 63] * 3)])
def test_good_hostnames(name):
    assert check_hostname(name) == name


@pytest.mark.parametrize("name", ["", "-web", "web-", "we_b", "web..org", "x" * 64, "a/b", "héllo",
                                  ".".join(["a" * 63] * 4) + ".a"])
def test_bad_hostnames(name):
    with pytest.raises(Fatal, match="RFC 1123") as e:
        check_hostname(name)
    assert e.value.problem == f"invalid hostname '{name}' in --hostname"


@pytest.mark.parametrize("mac,want", [("00:16:3e:12:34:56", "00:16:3e:12:34:56"), ("00:16:3E:AB:CD:EF", "00:16:3e:ab:cd:ef")])
def test_good_macs(mac, want):
    assert check_mac(mac) == want


@pytest.mark.parametrize("mac", ["00:16:3e:12:34", "zz:16:3e:12:34:56", "01:16:3e:12:34:56", "00-16-3e-12-34-56", ""])
def test_bad_macs(mac):
    with pytest.raises(Fatal, match="MAC address"):
        check_mac(mac)


@pytest.mark.parametrize("text,want", [("10.0.0.5", ("10.0.0.5", None)), ("10.0.0.5/24", ("10.0.0.5", 24)),
                                       ("10.0.0.5/255.255.0.0", ("10.0.0.5", 16)), ("10.0.0.5/32", ("10.0.0.5", 32))])
def test_good_addresses(text, want):
    assert check_address(text) == want


@pytest.mark.parametrize("text", ["10.0.0.300", "10.0.0", "10.0.0.5/33", "10.0.0.5/0", "10.0.0.5/", "host", "::1",
                                  "10.0.0.5/255.0.255.0"])
def test_bad_addresses(text):
    with pytest.raises(Fatal, match="invalid IP address"):
        check_address(text)


@pytest.mark.parametrize("text,want", [("255.255.255.0", 24), ("24", 24), ("/16", 16), ("255.255.255.255", 32),
                                       ("255.128.0.0", 9)])
def test_good_netmasks(text, want):
    assert check_netmask(text) == want


@pytest.mark.parametrize("text", ["255.0.255.0", "0.0.0.255", "33", "0", "0.0.0.0", "255.255.255", "mask", ""])
def test_bad_netmasks(text):
    with pytest.raises(Fatal, match="invalid netmask"):
        check_netmask(text)


def test_gateway_broadcast_nameservers():
    assert check_gateway("10.0.0.1") == "10.0.0.1" and check_broadcast("10.0.0.255") == "10.0.0.255"
    assert check_nameservers("1.1.1.1, 9.9.9.9 8.8.8.8") == ("1.1.1.1", "9.9.9.9", "8.8.8.8")
    assert check_nameservers(("1.1.1.1",)) == ("1.1.1.1",) and check_nameservers("") == ()
    for check, bad, what in ((check_gateway, "gw", "gateway"), (check_broadcast, "10.0.0.256", "broadcast"),
                             (check_nameservers, "1.1.1.1 dns.example", "nameserver")):
        with pytest.raises(Fatal, match=f"invalid {what}"):
            check(bad)


def test_bridge():
    assert check_bridge("xenbr0") == "xenbr0"
    with pytest.raises(Fatal, match="invalid bridge"):
        check_bridge("a bridge too far")


def test_each_source_names_its_own_setting():
    assert (CLI.label("ip", 2), ENV.label("ip", 2)) == ("--ip", "environment variable ip2")
    with pytest.raises(Fatal) as e:
        check_netmask("255.0.255.0", ENV.label("netmask"))
    assert e.value.problem == "invalid netmask '255.0.255.0' in environment variable netmask"


def net(**kw):
    args = dict(dhcp=False, ips=(), netmask="", gateway="", broadcast="", nameservers=(), mac="00:16:3e:00:00:01",
                bridge="xenbr0")
    args.update(kw)
    return check_network(**args)


def test_static_network_with_prefix_or_netmask():
    assert net(ips=("10.0.0.5/24",), gateway="10.0.0.1").netmask == "255.255.255.0"
    n = net(ips=("10.0.0.5", "10.0.0.6"), netmask="255.255.0.0", gateway="10.0.200.1", nameservers="1.1.1.1")
    assert n.ips == ("10.0.0.5", "10.0.0.6") and n.netmask == "255.255.0.0" and n.nameservers == ("1.1.1.1",)
    assert net(dhcp=True, mac="00:16:3E:00:00:01").mac == "00:16:3e:00:00:01"


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
        (dict(dhcp=True, mac="01:16:3e:00:00:01"), "multicast"),
    ],
)
def test_bad_networks(kw, msg):
    with pytest.raises(Fatal, match=msg):
        net(**kw)


def test_env_network_errors_name_the_variables():
    with pytest.raises(Fatal, match="in environment variable ip2"):
        net(ips=("10.0.0.5", "10.0.0.x"), netmask="24", src=ENV)
    with pytest.raises(Fatal, match="both dhcp and ip1 given"):
        net(dhcp=True, ips=("10.0.0.5",), src=ENV)
    with pytest.raises(Fatal, match=r"set netmask \(e.g. 255.255.255.0\)"):
        net(ips=("10.0.0.5",), src=ENV)
