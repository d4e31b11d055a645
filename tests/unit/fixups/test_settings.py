import pytest

from si_xen.errors import Fatal
from si_xen.fixups import run_all
from si_xen.fixups.settings import from_env


def test_minimal_env_is_dhcp():
    s = from_env({"hostname": "steve"})
    assert s.dhcp and s.disk == "xvda" and s.serial == "hvc0" and s.partitions == ()


def test_static_from_ip_without_dhcp_var():
    s = from_env({"hostname": "a.b.c", "ip1": "10.0.0.5", "ip2": "10.0.0.6", "netmask": "16", "dhcp": ""})
    assert s.static and s.ips == ("10.0.0.5", "10.0.0.6") and s.netmask == "255.255.0.0" and s.prefixlen == 16
    assert (s.short, s.domain) == ("a", "b.c")


def test_partitions():
    s = from_env({"NUMPARTITIONS": "2", "PARTITION1": "swap:128M:swap:::file:/x/swap.img",
                  "PARTITION2": "disk:2048M:ext4:/:errors=remount-ro:file:/x/disk.img"})
    assert s.dev(s.root_partition) == "/dev/xvda2" and s.partitions[0].fstype == "swap"


@pytest.mark.parametrize("env", [{"hostname": "bad_name"}, {"dhcp": "yes"}, {"dhcp": "0"}, {"ip1": "10.0.0.300"},
                                 {"ip1": "10.0.0.1", "netmask": "255.0.255.0"}, {"gateway": "gw"},
                                 {"nameserver": "1.1.1.1 x"}, {"mac": "00:16:3e"}, {"serial_device": "ttyX"},
                                 {"NUMPARTITIONS": "1", "PARTITION1": "disk:1G:ext4"},
                                 {"NUMPARTITIONS": "1", "PARTITION1": "disk:1G:ext4:relative:defaults:file:/x"}])
def test_bad_values_are_fatal(env, tmp_path):
    with pytest.raises(Fatal):
        run_all(str(tmp_path), env, log=lambda m: None)


def test_unknown_fixup_name_is_fatal(tmp_path):
    with pytest.raises(Fatal, match="unknown fixup"):
        run_all(str(tmp_path), {}, only="nope")
