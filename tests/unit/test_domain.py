"""xl.cfg rendering: golden files, and Xen's own parser (libxlutil) accepts each one."""

import os
from dataclasses import replace

import pytest

from si_xen import atomic, boot, domain
from si_xen.distros import OSInfo
from si_xen.plan import Disk, Network, Plan, number_disks
from tests.lib import xlu

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")
OS = OSInfo("debian", "debian", "12", "systemd", "Debian GNU/Linux 12 (bookworm)", "enX0", "ifupdown")


def base_plan(**kw) -> Plan:
    disks = number_disks([Disk("disk", "/", "ext4", 2048, "errors=remount-ro", target="/srv/xen/domains/web01/disk.img"),
                          Disk("swap", "", "swap", 128, "sw", target="/srv/xen/domains/web01/swap.img")])
    p = Plan(hostname="web01", image_name="debian12", image_path="/var/lib/systemimager/images/debian12", os=OS,
             memory=512, vcpus=2, type="pv", boot="direct", disks=tuple(disks), storage="dir",
             storage_root="/srv/xen", net=Network(True, mac="00:16:3e:01:02:03"), cfg_path="/etc/xen/web01.cfg")
    return replace(p, **kw)


CASES = {
    "pv-direct": dict(),
    "pv-pygrub": dict(boot="pygrub"),
    "pv-pvgrub2": dict(boot="pvgrub2"),
    "pvh-direct-static": dict(type="pvh", maxmem=1024,
                              net=Network(False, ("10.0.0.5", "10.0.0.6"), "255.255.255.0", "10.0.0.1", "", (),
                                          "00:16:3e:01:02:03", "br0")),
    "pv-lvm": dict(storage="lvm", storage_root="vg0", disks=tuple(
        replace(d, target=f"/dev/vg0/web01-{d.name}") for d in base_plan().disks)),
}


def rendered(name: str) -> str:
    plan = base_plan(**CASES[name])
    kernel = ramdisk = None
    if plan.boot == "direct":
        kernel, ramdisk = "/srv/xen/domains/web01/vmlinuz", "/srv/xen/domains/web01/initrd.img"
    return domain.render(plan, kernel=kernel, ramdisk=ramdisk, cmdline=boot.cmdline(plan.root.vdev),
                         created="2026-01-01 00:00:00 UTC")


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_golden(name):
    path = os.path.join(GOLDEN, f"{name}.cfg")
    text = rendered(name)
    if os.environ.get("SI_XEN_REGOLD"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read()


@pytest.mark.parametrize("name", sorted(CASES))
def test_xen_parser_accepts(name, tmp_path):
    from tests.conftest import require

    require(xlu.available(), "libxlutil (apt-get install libxenmisc4.17) is needed to check configs")
    cfg = tmp_path / "x.cfg"
    cfg.write_text(rendered(name))
    parsed = xlu.parse(str(cfg))
    plan = base_plan(**CASES[name])
    assert parsed["name"] == "web01" and parsed["memory"] == 512 and parsed["vcpus"] == 2
    assert parsed["type"] == plan.type
    assert parsed["disk"][0].endswith("target=" + plan.root.target)  # root first: pygrub boots disk 0
    assert len(parsed["disk"]) == 2
    if plan.boot == "direct":
        assert parsed["cmdline"] == "root=/dev/xvda2 ro console=hvc0"
    elif plan.boot == "pygrub":
        assert parsed["bootloader"] == "pygrub" and "kernel" not in parsed
    else:
        assert parsed["kernel"] == boot.PVGRUB2[plan.type]


def test_parser_rejects_what_xl_would(tmp_path):
    from tests.conftest import require

    require(xlu.available(), "libxlutil needed")
    bad = tmp_path / "bad.cfg"
    bad.write_text(rendered("pv-direct").replace("format=raw", "format=qcow9", 1))
    with pytest.raises(xlu.XlParseError, match="qcow9"):
        xlu.parse(str(bad))


def test_user_template_overrides(tmp_path):
    (tmp_path / "xl.cfg.j2").write_text('name = "{{ plan.hostname }}"\n# mine\n')
    plan = base_plan()
    text = domain.render(plan, kernel="k", ramdisk=None, cmdline="c", user_dir=str(tmp_path))
    assert text == 'name = "web01"\n# mine\n'


def test_write_atomic_leaves_no_temp(tmp_path):
    atomic.write(str(tmp_path / "a.cfg"), "x")
    atomic.write(str(tmp_path / "a.cfg"), "y")
    assert os.listdir(tmp_path) == ["a.cfg"] and (tmp_path / "a.cfg").read_text() == "y"
