"""The Request: what the admin asked, typed; defaults from config.BUILTIN; one FATAL per bad field."""

import json
from dataclasses import replace

import pytest

from si_xen import config
from si_xen.errors import Fatal
from si_xen.plan import Activation, Disk
from si_xen.request import Request, Storage


def given(tmp_path, **kw):
    return {"hostname": "vm1", "dhcp": "yes", "dir": str(tmp_path / "xen"), "output": str(tmp_path), **kw}


def test_what_is_not_given_is_config_builtin(tmp_path):
    r = Request.from_options(given(tmp_path))
    assert (r.memory, r.vcpus, r.size, r.swap, r.fs, r.type, r.boot, r.layout, r.bridge, r.extension) == (
        512, 1, 4096, 256, "ext4", "pv", "direct", "default", "xenbr0", ".cfg")
    assert r.activation == Activation(config.BUILTIN["toolstack"])
    # the dataclass's own defaults are config.BUILTIN's too (a front end that sets only some fields)
    assert Request(("vm",)).memory == 512 and Request(("vm",)).activation.toolstack == config.BUILTIN["toolstack"]


def test_values_are_typed_and_flags_read_as_xen_conf_writes_them(tmp_path):
    r = Request.from_options(given(tmp_path, memory="1G", maxmem="2048", vcpus="4", swap="0", ip="10.0.0.5/24 10.0.0.6",
                                   dhcp="off", console="true", autostart="1", fixups="hostname,network"))
    assert (r.memory, r.maxmem, r.vcpus, r.swap, r.dhcp) == (1024, 2048, 4, 0, False)
    assert r.ips == ("10.0.0.5/24", "10.0.0.6") and r.fixups_only == ("hostname", "network")
    assert r.activation == Activation("auto", start=True, console=True, autostart=True), "--console starts the VM"
    assert r.storage == Storage("dir", str(tmp_path / "xen"))


@pytest.mark.parametrize("bad,message", [
    ({"hostname": ""}, "no --hostname given"),
    ({"hostname": "bad_name"}, "invalid hostname 'bad_name' in --hostname"),
    ({"memory": "32M"}, "--memory 32M is too small"),
    ({"maxmem": "256M"}, "--maxmem 256M is less than --memory 512M"),
    ({"vcpus": "0"}, "invalid --vcpus '0'"),
    ({"fs": "zfs"}, "invalid --fs 'zfs'"),
    ({"type": "hvm"}, "invalid --type 'hvm'"),
    ({"type": "pvh", "boot": "pygrub"}, "pygrub cannot boot a PVH guest here"),
    ({"layout": "lvm"}, "invalid --layout 'lvm'"),
    ({"size": "huge"}, "invalid --size 'huge'"),
    ({"swap": "-1"}, "invalid --swap '-1'"),
    ({"lvm": "vg0"}, "both --dir and --lvm given"),
    ({"dir": None}, "no storage given"),
    ({"thin_pool": "pool"}, "--thin-pool given without --lvm"),
    ({"initrd": "/nonexistent/initrd"}, "initrd /nonexistent/initrd not found"),
])
def test_each_bad_field_is_one_fatal_naming_it(tmp_path, bad, message):
    with pytest.raises(Fatal) as e:
        Request.from_options(given(tmp_path, **bad))
    assert str(e.value).startswith(message), e.value


def test_the_config_directory_must_exist(tmp_path):
    with pytest.raises(Fatal, match=f"config directory {tmp_path}/none does not exist"):
        Request.from_options(given(tmp_path, output=str(tmp_path / "none")))


def test_a_batch_takes_consecutive_addresses_and_stable_macs(tmp_path):
    r = Request.from_options(given(tmp_path, hostname="web[08-10]", dhcp=None, ip=["10.0.0.8/24"], mac="00:16:3e:00:00:01"))
    assert r.hostnames == ("web08", "web09", "web10")
    assert [r.for_host(i)[:2] for i in range(3)] == [("web08", ("10.0.0.8/24",)), ("web09", ("10.0.0.9/24",)),
                                                      ("web10", ("10.0.0.10/24",))]
    assert {r.for_host(i)[2] for i in range(3)} == {""}, "one --mac cannot be every VM's"
    one = Request.from_options(given(tmp_path, mac="00:16:3e:00:00:01"))
    assert one.for_host(0)[2] == "00:16:3e:00:00:01"


def test_lvm_storage_keeps_the_vg_and_its_thin_pool(tmp_path):
    r = Request.from_options(given(tmp_path, dir=None, lvm="vg0", thin_pool="pool0", full_copy="yes"))
    assert r.storage == Storage("lvm", "vg0", "pool0", full_copy=True)


@pytest.mark.parametrize("kw", [
    {"memory": "1G", "maxmem": "2G", "vcpus": "2", "ip": "10.0.0.5/24 10.0.0.6", "dhcp": "no", "gateway": "10.0.0.1",
     "nameserver": "10.0.0.1 9.9.9.9", "mac": "00:16:3e:00:00:01", "autostart": "yes", "skip_fixups": "clock,console",
     "size": "8G", "size_given": True, "swap": "0", "fs": "xfs", "boot": "pvgrub2", "type": "pvh"},
    {"lvm": "vg0", "thin_pool": "pool", "dir": None, "layout": "image", "noswap": "yes", "fixups": "hostname"},
    {"full_copy": "yes", "start": "yes", "console": "yes", "toolstack": "xl", "bridge": "br1", "extension": ".xl"},
])
def test_a_recorded_request_reads_back_validated_the_same(tmp_path, kw):
    r = Request.from_options(given(tmp_path, image="deb12", force="yes", dry_run="yes", **kw))
    d = json.loads(json.dumps(r.to_json()))
    assert not {"said", "force", "dry_run"} & d.keys()
    assert Request.from_json(d) == replace(r, force=False, dry_run=False)


def test_a_ganeti_request_keeps_its_given_disks(tmp_path):
    disk = Disk("disk", "/", "ext4", 4096, "defaults", vdev="xvda1", target="/dev/vg/inst.disk0")
    r = Request(("inst1",), image="deb12", storage=Storage("given", disks=(disk,)), ips=("10.0.0.5/24",), output=str(tmp_path))
    assert Request.from_json(json.loads(json.dumps(r.to_json()))) == r


@pytest.mark.parametrize("change,message", [
    ({"memory": 32}, "--memory 32M is too small"),
    ({"kernel": "/nowhere/vmlinuz"}, "kernel /nowhere/vmlinuz not found"),
    ({"storage": {}}, "no storage given"),
])
def test_a_recorded_request_is_validated_again(tmp_path, change, message):
    d = {**Request.from_options(given(tmp_path)).to_json(), **change}
    with pytest.raises(Fatal, match=message):
        Request.from_json(d)
