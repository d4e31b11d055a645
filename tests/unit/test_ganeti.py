"""The Ganeti OS provider: environment → instance → plan, the OS parameters, the OS
definition files (no root, nothing touched)."""

from __future__ import annotations

import os

import pytest

from si_xen.errors import Fatal, UsageError
from si_xen.fixups.disks import fstab
from si_xen.fixups.spec import spec_from_plan
from si_xen.ganeti import install, osdef, params, scripts
from si_xen.ganeti.env import instance
from si_xen.image import open_image
from si_xen.image.survey import survey

from . import fakeimage

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PVGRUB = "/usr/lib/grub-xen/grub-x86_64-xen.bin"


def genv(**kw) -> dict[str, str]:
    """What Ganeti 3.0 passes `create` for a two-disk, one-NIC xen-pvm instance."""
    env = {
        "OS_API_VERSION": "20", "OS_NAME": "systemimager", "OS_VARIANT": "deb", "DEBUG_LEVEL": "0",
        "INSTANCE_NAME": "inst1.sixen.test", "INSTANCE_OS": "systemimager+deb", "HYPERVISOR": "xen-pvm",
        "DISK_COUNT": "2", "DISK_0_PATH": "/dev/xenvg/u1.disk0", "DISK_0_SIZE": "2048", "DISK_0_ACCESS": "rw",
        "DISK_0_BACKEND_TYPE": "block", "DISK_1_PATH": "/dev/xenvg/u1.disk1", "DISK_1_SIZE": "256",
        "NIC_COUNT": "1", "NIC_0_MAC": "aa:00:00:12:34:56", "NIC_0_MODE": "bridged", "NIC_0_BRIDGE": "xenbr0",
        "NIC_0_LINK": "xenbr0", "INSTANCE_HV_kernel_path": PVGRUB, "INSTANCE_HV_root_path": "",
        "INSTANCE_HV_use_bootloader": "False", "INSTANCE_BE_maxmem": "512", "INSTANCE_BE_vcpus": "1",
    }
    env.update(kw)
    return {k: v for k, v in env.items() if v is not None}


@pytest.fixture
def image(tmp_path):
    return open_image(fakeimage.make(tmp_path / "images" / "deb", unpacked_mib=16))


def test_environment_is_read_as_ganeti_writes_it():
    inst = instance(genv(OSP_FILESYSTEM="xfs", OSP_SKIP_FIXUPS="issue", INSTANCE_REINSTALL="1"))
    assert inst.name == "inst1.sixen.test" and inst.variant == "deb" and inst.reinstall
    assert [(d.index, d.path, d.size_mib) for d in inst.disks] == [(0, "/dev/xenvg/u1.disk0", 2048),
                                                                   (1, "/dev/xenvg/u1.disk1", 256)]
    assert inst.nics[0].mac == "aa:00:00:12:34:56" and inst.nics[0].bridge == "xenbr0"
    assert inst.osp == {"filesystem": "xfs", "skip_fixups": "issue"}
    assert inst.hv["kernel_path"] == PVGRUB and inst.be["maxmem"] == "512"


def test_plan_puts_root_on_disk0_whole_and_swap_on_the_last(image):
    plan = install.plan_for(instance(genv()), image, survey(image.path))
    root, swap = plan.disks
    assert (root.vdev, root.target, root.fs, root.mountpoint) == ("xvda", "/dev/xenvg/u1.disk0", "ext4", "/")
    assert (swap.vdev, swap.target, swap.fs) == ("xvdb", "/dev/xenvg/u1.disk1", "swap")
    assert plan.storage == "given" and plan.boot == "pvgrub2" and plan.kernel is None
    assert plan.net.dhcp and plan.net.mac == "aa:00:00:12:34:56" and plan.net.bridge == "xenbr0"
    spec = spec_from_plan(plan)
    lines = fstab("", type("Ctx", (), {"s": spec, "os": image.os})()).splitlines()
    assert "/dev/xvda\t/\text4\terrors=remount-ro\t0\t1" in lines and "/dev/xvdb\tnone\tswap\tsw\t0\t0" in lines


def test_swap_no_and_one_disk_leave_no_swap(image):
    assert len(install.plan_for(instance(genv(OSP_SWAP="no")), image, None).disks) == 1
    one = genv(DISK_COUNT="1")
    assert [d.vdev for d in install.plan_for(instance(one), image, None).disks] == ["xvda"]


def test_static_address_from_the_nics_network(image):
    env = genv(NIC_0_IP="192.0.2.50", NIC_0_NETWORK_SUBNET="192.0.2.0/24", NIC_0_NETWORK_GATEWAY="192.0.2.1",
               OSP_NAMESERVERS="192.0.2.53,192.0.2.54")
    net = install.plan_for(instance(env), image, None).net
    assert net.static and net.ips == ("192.0.2.50",) and net.netmask == "255.255.255.0"
    assert net.gateway == "192.0.2.1" and net.nameservers == ("192.0.2.53", "192.0.2.54")
    with pytest.raises(Fatal, match="has the address 192.0.2.50 but no network") as e:
        install.plan_for(instance(genv(NIC_0_IP="192.0.2.50")), image, None)
    assert "gnt-network" in e.value.fix


@pytest.mark.parametrize("hv,want", [
    ({"INSTANCE_HV_kernel_path": PVGRUB}, ("pvgrub2", None, None)),
    ({"INSTANCE_HV_use_bootloader": "True", "INSTANCE_HV_bootloader_path": "/usr/lib/xen-4.17/bin/pygrub"},
     ("pygrub", None, None)),
    ({"INSTANCE_HV_kernel_path": "/boot/vmlinuz-6.1", "INSTANCE_HV_initrd_path": "/boot/initrd.img-6.1",
      "INSTANCE_HV_root_path": "/dev/xvda"}, ("direct", "/boot/vmlinuz-6.1", "/boot/initrd.img-6.1")),
])
def test_boot_follows_the_clusters_xen_pvm_parameters(hv, want):
    assert install.boot_mode(instance(genv(**hv))) == want


@pytest.mark.parametrize("env,problem", [
    ({"INSTANCE_HV_kernel_path": "/boot/vmlinuz-6.1", "INSTANCE_HV_root_path": "/dev/xvda1"}, "root_path is /dev/xvda1"),
    ({"INSTANCE_HV_use_bootloader": "True", "INSTANCE_HV_bootloader_path": "/usr/bin/grub"}, "is not pygrub"),
    ({"HYPERVISOR": "xen-hvm"}, "xen-hvm is not supported"),
])
def test_boot_settings_this_os_cannot_serve_are_fatal(env, problem):
    with pytest.raises(Fatal, match=problem):
        install.boot_mode(instance(genv(**env)))


def test_a_small_disk0_and_no_disks_are_named(image):
    with pytest.raises(Fatal, match=r"disk 0 of inst1.sixen.test has 8 MiB, image 'deb' needs \d+ MiB"):
        install.plan_for(instance(genv(DISK_0_SIZE="8")), image, survey(image.path))
    with pytest.raises(Fatal, match="has no disks"):
        install.plan_for(instance(genv(DISK_COUNT="0")), image, None)
    with pytest.raises(Fatal, match="disk 0 has no DISK_0_PATH"):
        instance(genv(DISK_0_PATH=None, DISK_0_URI="rbd:pool/x"))


def test_parameters_are_checked_one_sentence_each():
    assert params.problems({"filesystem": "xfs", "swap": "no", "server": "img:8873", "overrides": "web,site"}) == []
    got = params.problems({"filesystem": "zfs", "swap": "maybe", "server": "a b", "colour": "red",
                           "nameservers": "1.2.3", "skip_fixups": "nosuch"})
    assert len(got) == 6
    assert "unknown OS parameter 'colour'" in got[0] and "filesystem='zfs': must be one of ext3, ext4, xfs" in got[1]
    assert any("skip_fixups='nosuch'" in g for g in got)


def test_verify_parameters_checks_values_and_the_image(tmp_path, monkeypatch):
    fakeimage.make(tmp_path / "images" / "deb")
    (tmp_path / "sis").mkdir()
    (tmp_path / "sis/systemimager.conf").write_text(f"DEFAULT_IMAGE_DIR = {tmp_path}/images\n")
    monkeypatch.setenv("SIS_CONFDIR", str(tmp_path / "sis"))
    core = {"OS_API_VERSION": "20", "OS_NAME": "systemimager"}
    assert scripts.verify({**core, "OS_VARIANT": "deb", "OSP_FILESYSTEM": "ext4"}) == []
    assert "image 'nosuch' not found" in scripts.verify({**core, "OS_VARIANT": "nosuch"})[0]
    assert scripts.verify({**core, "OS_VARIANT": "nosuch", "OSP_SERVER": "img"}) == [], "a server's images: at create"
    assert "must be one of yes, no" in scripts.verify({**core, "OSP_SWAP": "2"})[0]


@pytest.mark.parametrize("script,argv", [("create", ["-h"]), ("verify", []), ("verify", ["os"]), ("rename", ["x"])])
def test_scripts_refuse_other_arguments(script, argv):
    with pytest.raises(UsageError, match=f"usage: {script}"):
        scripts.body(script, argv, {})


def test_checked_in_os_definition_is_current():
    """hooks/ganeti/systemimager is what osdef writes (regenerate: python3 -m si_xen.ganeti.osdef
    hooks/ganeti/systemimager); its variants.list link is the Debian package's (debian/si-xen.links)."""
    d = os.path.join(REPO, "hooks/ganeti/systemimager")
    for name, (text, mode) in osdef.files().items():
        with open(os.path.join(d, name)) as f:
            assert f.read() == text, f"{name} is stale"
        assert os.stat(os.path.join(d, name)).st_mode & 0o777 == mode, name
    assert sorted(os.listdir(d)) == sorted(osdef.files())
    first = [line.split(" ", 1)[0] for line in osdef.files()["parameters.list"][0].splitlines()]
    assert first == [p.name for p in params.PARAMS]


def test_install_ganeti_os_writes_the_definition_and_its_variants_link(tmp_path):
    from si_xen.cli import xenhooks

    dest = tmp_path / "os/systemimager"
    assert xenhooks.main(["install-ganeti-os", "--dest", str(dest)]) == 0
    assert os.readlink(dest / "variants.list") == osdef.VARIANTS and os.access(dest / "create", os.X_OK)
    assert osdef.write(str(dest)) == [], "a second run changes nothing"
    out = tmp_path / "variants.list"
    osdef.write_variants(["debian12", "centos5"], str(out))
    assert [ln for ln in out.read_text().splitlines() if not ln.startswith("#")] == ["debian12", "centos5"]


def test_a_failing_tar_in_export_is_one_fatal_line(tmp_path, fp, capsys):
    """The tar of an export runs through proc: its failure is a FATAL line, not a traceback,
    and the disk is unmounted."""
    from si_xen.cli.common import run_main

    disk = tmp_path / "disk0"
    disk.write_bytes(b"")
    env = genv(EXPORT_DEVICE=str(disk), EXPORT_INDEX="0")
    fp.register(["blkid", fp.any()], stdout="ext4\n")
    fp.register(["mount", fp.any()])
    fp.register(["tar", fp.any()], returncode=2, stderr="tar: ./etc/shadow: Cannot open: Input/output error\n")
    fp.register(["umount", fp.any()])
    with open(tmp_path / "out.tar", "wb") as out:
        code = run_main("systemimager/export", lambda a: install.export(env, instance(env), out), [])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("FATAL: tar exited 2: tar: ./etc/shadow: Cannot open") and "Traceback" not in err
    assert fp.call_count(["umount", fp.any()]) == 1
