"""The guest spec: from a Plan, to xen-tools' environment and back; the env parser's checks."""

import inspect
from dataclasses import replace

import pytest

from si_xen.errors import Fatal
from si_xen.fixups import FIXUPS, base, run_all, spec
from si_xen.fixups.spec import GuestSpec, Partition, spec_from_plan
from si_xen.fixups.xentools import spec_from_env
from si_xen.plan import Disk, Network, Plan, number_disks
from tests.unit.fixups.conftest import STATIC
from tests.unit.fixups.trees import build
from tests.unit.fixups.xtenv import env_from_spec


def plan(**kw) -> Plan:
    disks = number_disks([Disk("disk", "/", "ext4", 2048, "errors=remount-ro", target="/x/disk.img"),
                          Disk("swap", "", "swap", 128, "sw", target="/x/swap.img")])
    p = Plan(hostname="vm", image_name="img", image_path="/images/img", os=None, memory=512, vcpus=2,
             type="pv", boot="direct", disks=tuple(disks), storage="dir", storage_root="/x",
             net=Network(True, mac="00:16:3e:00:00:01"), cfg_path="/etc/xen/vm.cfg")
    return replace(p, **kw)


STATIC_NET = Network(False, ("10.0.0.5", "10.0.0.6", "10.0.0.7"), "255.255.255.0", "10.0.0.1", "10.0.0.255",
                     ("1.1.1.1", "8.8.8.8"), "00:16:3e:00:00:01", "br0")
LVM_DISKS = tuple(replace(d, target=f"/dev/vg0/vm-{d.name}") for d in number_disks([
    Disk("disk", "/", "xfs", 4096, "defaults"), Disk("var", "/var", "ext4", 1024, "noatime"),
    Disk("var-log", "/var/log", "ext4", 512, "defaults"), Disk("swap", "", "swap", 256, "sw")]))
PLANS = {
    "dhcp": plan(),
    "static-several-ips": plan(net=STATIC_NET, hostname="vm.example.org"),
    "pygrub": plan(boot="pygrub"),
    "pvgrub2-pvh": plan(boot="pvgrub2", type="pvh"),
    "lvm-partitions": plan(storage="lvm", storage_root="vg0", disks=LVM_DISKS),
    "supplied-kernel": plan(kernel="/boot/vmlinuz-6.1.0-xen", initrd="/boot/initrd.img-6.1.0-xen"),
}


@pytest.mark.parametrize("name", sorted(PLANS))
def test_round_trip_through_xen_tools_env(name):
    s = spec_from_plan(PLANS[name])
    env = env_from_spec(s)
    assert all(isinstance(v, str) for v in env.values())
    assert spec_from_env(env) == s
    assert env_from_spec(spec_from_env(env)) == env


def test_to_env_speaks_xen_tools():
    """What xen-create-image's hooks would see for this VM (names and formats of xen-tools.md §1.4)."""
    env = env_from_spec(spec_from_plan(plan(boot="pygrub", net=replace(STATIC_NET, ips=STATIC_NET.ips[:2]))))
    assert env == {
        "hostname": "vm", "dhcp": "0", "mac": "00:16:3e:00:00:01", "bridge": "br0", "netmask": "255.255.255.0",
        "gateway": "10.0.0.1", "broadcast": "10.0.0.255", "nameserver": "1.1.1.1 8.8.8.8", "dist": "systemimager",
        "install_method": "copy", "install_source": "/images/img", "disk_device": "xvda", "serial_device": "hvc0",
        "NUMPARTITIONS": "2", "ip1": "10.0.0.5", "ip2": "10.0.0.6", "ip_count": "2", "pygrub": "1",
        "PARTITION1": "swap:128M:swap:::file:/x/swap.img",
        "PARTITION2": "disk:2048M:ext4:/:errors=remount-ro:file:/x/disk.img",
    }


def test_spec_from_plan():
    s = spec_from_plan(PLANS["lvm-partitions"], keys="/tmp/keys")
    assert [(p.index, p.mountpoint, p.kind) for p in s.partitions] == [
        (1, "", "phy"), (2, "/", "phy"), (3, "/var", "phy"), (4, "/var/log", "phy")]
    assert s.dev(s.root_partition) == "/dev/xvda2" and s.image_name == "img" and not s.pygrub
    assert s.hostkeys == "/tmp/keys" and "/tmp/keys" not in env_from_spec(s).values(), "host keys stay in-process"
    k = spec_from_plan(PLANS["supplied-kernel"])
    assert (k.kernel, k.initrd, k.pygrub) == ("/boot/vmlinuz-6.1.0-xen", "/boot/initrd.img-6.1.0-xen", False)


def test_minimal_env_is_dhcp():
    s = spec_from_env({"hostname": "steve"})
    assert s.net.dhcp and s.disk == "xvda" and s.serial == "hvc0" and s.partitions == () and s == GuestSpec("steve")


def test_static_from_ip_without_dhcp_var():
    s = spec_from_env({"hostname": "a.b.c", "ip1": "10.0.0.5", "ip2": "10.0.0.6", "netmask": "16", "dhcp": ""})
    assert s.net.static and s.net.ips == ("10.0.0.5", "10.0.0.6")
    assert (s.net.netmask, s.net.prefixlen) == ("255.255.0.0", 16)
    assert (s.short, s.domain) == ("a", "b.c")


def test_xen_tools_disk_names_and_partitions():
    s = spec_from_env({"NUMPARTITIONS": "2", "PARTITION1": "swap:128M:swap:::file:/x/swap.img",
                       "PARTITION2": "disk:2048M:ext4:/:errors=remount-ro:file:/x/disk.img", "ide": "1"})
    assert s.dev(s.root_partition) == "/dev/hda2" and s.partitions[0].fstype == "swap"
    assert s.partitions[1] == Partition(2, "disk", "2048M", "ext4", "/", "errors=remount-ro", "file", "/x/disk.img")


@pytest.mark.parametrize("env,var", [
    ({"hostname": "bad_name"}, "hostname"), ({"dhcp": "yes"}, "dhcp"), ({"ip1": "10.0.0.300"}, "ip1"),
    ({"ip1": "10.0.0.1", "ip2": "10.0.0.x", "netmask": "24"}, "ip2"),
    ({"ip1": "10.0.0.1", "netmask": "255.0.255.0"}, "netmask"), ({"gateway": "gw"}, "gateway"),
    ({"broadcast": "10.0.0"}, "broadcast"), ({"nameserver": "1.1.1.1 x"}, "nameserver"),
    ({"mac": "00:16:3e"}, "mac"), ({"bridge": "a bridge too far"}, "bridge"),
    ({"serial_device": "ttyX"}, "serial_device"), ({"disk_device": "xvda1"}, "disk_device"),
    ({"NUMPARTITIONS": "x"}, "NUMPARTITIONS"), ({"NUMPARTITIONS": "1", "PARTITION1": "disk:1G:ext4"}, "PARTITION1"),
    ({"NUMPARTITIONS": "1", "PARTITION1": "disk:1G:ext4:relative:defaults:file:/x"}, "PARTITION1"),
])
def test_bad_values_are_fatal_naming_the_variable(env, var):
    with pytest.raises(Fatal) as e:
        spec_from_env(env)
    assert e.value.problem.endswith(f"in environment variable {var}") and e.value.fix


@pytest.mark.parametrize("env,msg", [
    ({"dhcp": "0"}, "no network configuration"), ({"dhcp": "1", "ip1": "10.0.0.5"}, "both dhcp and ip1"),
    ({"ip1": "10.0.0.5"}, "without a netmask"), ({"ip1": "10.0.0.5", "netmask": "24", "gateway": "10.1.0.1"}, "not in"),
])
def test_inconsistent_network_is_fatal(env, msg):
    """The planner's rules: no silent /24 for a static address without a netmask."""
    with pytest.raises(Fatal, match=msg):
        spec_from_env(env)


def test_fixups_read_only_the_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("hostname", "from-the-env")
    root = build(tmp_path / "g", "debian12")
    run_all(root, STATIC, only="hostname", log=lambda m: None)
    assert (tmp_path / "g/etc/hostname").read_text() == "vm1\n"
    for mod in {inspect.getmodule(f.func) for f in FIXUPS} | {spec, base}:
        src = inspect.getsource(mod)
        assert "os.environ" not in src and "getenv" not in src, mod.__name__


def test_unknown_fixup_name_is_fatal(tmp_path):
    with pytest.raises(Fatal, match="unknown fixup"):
        run_all(str(tmp_path), GuestSpec(), only="nope")


def _record_of(p: Plan, request: dict):
    """The record si_mkxenvm writes for plan ``p`` (VmRecord.built's fields a spec reads)."""
    from si_xen.record import DiskRecord, VmRecord
    from si_xen.sizes import human

    return VmRecord(p.hostname, p.image_name, image_path=p.image_path, storage=p.storage, boot=p.boot,
                    disks=tuple(DiskRecord(d.vdev, d.mountpoint, d.fs, human(d.size_mib), d.target) for d in p.disks),
                    mac=p.net.mac, ips=p.net.ips, request=request)


def _no_options(s: GuestSpec) -> GuestSpec:  # the record keeps neither mount options nor sizes as planned
    return replace(s, partitions=tuple(replace(p, options="sw" if not p.mountpoint else "", size="")
                                       for p in s.partitions))


@pytest.mark.parametrize("name", sorted(PLANS))
def test_spec_from_record_is_the_plans_keeping_identity(name):
    p = PLANS[name]
    net = p.net
    req = {"hostnames": [p.hostname], "ips": [f"{net.ips[0]}/24"] if net.ips else [], "netmask": "",  # --ip A/24
           "dhcp": net.dhcp, "gateway": net.gateway, "broadcast": net.broadcast, "nameservers": ",".join(net.nameservers),
           "bridge": net.bridge, "kernel": p.kernel, "initrd": p.initrd}  # as Request.to_json writes them
    got = spec.spec_from_record(_record_of(p, req), "/keys")
    assert got.keep_identity and got.hostkeys == "/keys"
    assert _no_options(got) == _no_options(replace(spec_from_plan(p, "/keys"), keep_identity=True))


def test_spec_from_record_of_an_older_si_xen_lacks_only_what_it_never_recorded():
    p = PLANS["static-several-ips"]
    got = spec.spec_from_record(_record_of(p, {}))
    assert got.net == Network(False, p.net.ips, "", "", "", (), p.net.mac)
    assert got.hostname == p.hostname and got.keep_identity and got.root_partition.target == "/x/disk.img"
