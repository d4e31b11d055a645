"""xl.cfg rendering: golden files, and Xen's own parser (libxlutil) accepts each one; the same VMs as
libvirt domain XML: golden files, libvirt's own schema accepts each one, and they say what the xl.cfg says."""

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
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


# -- the same VMs as libvirt domain XML (--toolstack libvirt)

def rendered_xml(name: str) -> str:
    plan = base_plan(**CASES[name])
    kernel = ramdisk = None
    if plan.boot == "direct":
        kernel, ramdisk = "/srv/xen/domains/web01/vmlinuz", "/srv/xen/domains/web01/initrd.img"
    return domain.render(plan, kernel=kernel, ramdisk=ramdisk, cmdline=boot.cmdline(plan.root.vdev),
                         created="2026-01-01 00:00:00 UTC", template=domain.LIBVIRT_TEMPLATE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_libvirt_xml_matches_golden(name):
    path = os.path.join(GOLDEN, f"{name}.xml")
    text = rendered_xml(name)
    if os.environ.get("SI_XEN_REGOLD"):
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read()


def _validate(path) -> subprocess.CompletedProcess:
    # libvirt's own schema (libvirt-clients' domain.rng), with its own validator
    return subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True, text=True)


def _need_validator():
    from tests.conftest import require

    require(shutil.which("virt-xml-validate") and shutil.which("xmllint"),
            "virt-xml-validate (apt-get install libvirt-clients libxml2-utils) is needed to check the XML")


VALIDATE = pytest.mark.allow_subprocess(reason="libvirt's own virt-xml-validate is the check")


@VALIDATE
@pytest.mark.parametrize("name", sorted(CASES))
def test_libvirt_schema_accepts_golden(name):
    _need_validator()
    r = _validate(os.path.join(GOLDEN, f"{name}.xml"))
    assert r.returncode == 0, r.stderr + r.stdout


@VALIDATE
def test_libvirt_schema_rejects_what_libvirt_would(tmp_path):
    """The check can fail: a machine type libvirt does not know is refused."""
    _need_validator()
    bad = tmp_path / "bad.xml"
    bad.write_text(rendered_xml("pvh-direct-static").replace("machine='xenpvh'", "machine='xenpvhx'"))
    assert _validate(bad).returncode != 0


@VALIDATE
def test_names_with_two_hyphens_make_valid_xml(tmp_path):
    """An IDN hostname (xn--) and an image named with "--": no XML comment holds them (a comment
    cannot), the schema accepts the domain and its description names both."""
    _need_validator()
    plan = base_plan(hostname="xn--bcher-kva", image_name="rhel9--test", cfg_path="/etc/xen/xn--bcher-kva.cfg")
    text = domain.render(plan, kernel="/k", ramdisk=None, cmdline="root=/dev/xvda2", template=domain.LIBVIRT_TEMPLATE)
    (tmp_path / "d.xml").write_text(text)
    assert _validate(tmp_path / "d.xml").returncode == 0, text
    desc = ET.fromstring(text).findtext("description")
    assert "rhel9--test" in desc and desc.endswith("si_rmxenvm xn--bcher-kva")


@pytest.mark.parametrize("name", sorted(CASES))
def test_libvirt_xml_says_what_the_xl_cfg_says(name, tmp_path):
    """Every setting both formats express, from the one plan: the xl.cfg as Xen's own parser
    reads it against the XML's elements."""
    from tests.conftest import require

    require(xlu.available(), "libxlutil (apt-get install libxenmisc4.17) is needed to read the xl.cfg")
    cfg = tmp_path / "x.cfg"
    cfg.write_text(rendered(name))
    xl = xlu.parse(str(cfg))
    dom = ET.fromstring(rendered_xml(name))
    plan = base_plan(**CASES[name])
    assert dom.get("type") == "xen" and dom.findtext("name") == xl["name"]
    assert int(dom.findtext("vcpu")) == xl["vcpus"]
    mem, cur = int(dom.findtext("memory")), dom.findtext("currentMemory")
    assert (int(cur), mem) == (xl["memory"], xl["maxmem"]) if "maxmem" in xl else (cur, mem) == (None, xl["memory"])
    ostype = dom.find("os/type")
    assert (ostype.get("machine"), ostype.text) == ({"pv": ("xenpv", "linux"), "pvh": ("xenpvh", "xenpvh")}[xl["type"]])
    assert dom.findtext("os/kernel") == xl.get("kernel") and dom.findtext("os/initrd") == xl.get("ramdisk")
    assert dom.findtext("os/cmdline") == xl.get("cmdline") and dom.findtext("bootloader") == xl.get("bootloader")
    for event in ("on_poweroff", "on_reboot", "on_crash"):  # strings xlu.parse does not read
        assert dom.findtext(event) == re.search(rf'^{event}\s*=\s*"(\w+)"', cfg.read_text(), re.M)[1]
    disks = dom.findall("devices/disk")
    assert [(d.find("target").get("dev"), (d.find("source").get("file") or d.find("source").get("dev"))) for d in disks] \
        == [(s["vdev"], s["target"]) for s in (dict(kv.split("=", 1) for kv in x.split(", ")) for x in xl["disk"])]
    assert all(d.get("type") == ("block" if plan.storage == "lvm" else "file") and d.find("driver").get("name") is None
               for d in disks)  # no driver name: libxl picks the backend, as for the xl.cfg's disks
    vif = dict(kv.split("=", 1) for kv in xl["vif"][0].split(", "))
    nic = dom.find("devices/interface")
    assert (nic.get("type"), nic.find("mac").get("address"), nic.find("source").get("bridge")) == \
        ("bridge", vif["mac"], vif["bridge"])
    # one <ip>, the first: libvirt's libxl driver refuses a second on a bridge (the template says why)
    assert [ip.get("address") for ip in nic.findall("ip")] == vif.get("ip", "").split()[:1]
    assert dom.find("devices/console/target").get("type") == "xen"


def test_libvirt_xml_escapes_values_and_keeps_a_stable_uuid():
    plan = base_plan(net=Network(True, mac="00:16:3e:01:02:03", bridge="br&<'x"))
    text = domain.render(plan, kernel="/k", ramdisk=None, cmdline="a<b", template=domain.LIBVIRT_TEMPLATE)
    dom = ET.fromstring(text)  # well-formed whatever the values
    assert dom.find("devices/interface/source").get("bridge") == "br&<'x" and dom.findtext("os/cmdline") == "a<b"
    again = ET.fromstring(domain.render(plan, kernel="/k", ramdisk=None, cmdline="c", template=domain.LIBVIRT_TEMPLATE))
    other = ET.fromstring(domain.render(replace(plan, hostname="web02"), kernel="/k", ramdisk=None, cmdline="c",
                                        template=domain.LIBVIRT_TEMPLATE))
    assert dom.findtext("uuid") == again.findtext("uuid") != other.findtext("uuid")


def test_libvirt_user_template_overrides(tmp_path):
    (tmp_path / "libvirt.xml.j2").write_text("<domain type='xen'><name>{{ plan.hostname }}</name></domain>\n")
    text = domain.render(base_plan(), kernel="k", ramdisk=None, cmdline="c", user_dir=str(tmp_path),
                         template=domain.LIBVIRT_TEMPLATE)
    assert text == "<domain type='xen'><name>web01</name></domain>\n"
