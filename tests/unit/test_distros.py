import pytest

from si_xen.distros import detect, parse_os_release
from si_xen.errors import Fatal
from si_xen.guestfs import Guest
from tests.unit.fixups.trees import build

CASES = {  # tree: (id, family, release, init, nic, network)
    "debian4": ("debian", "debian", "4", "sysvinit", "eth0", "ifupdown"),
    "debian12": ("debian", "debian", "12", "systemd", "enX0", "ifupdown"),
    "ubuntu710": ("ubuntu", "debian", "7.10", "upstart", "eth0", "ifupdown"),
    "ubuntu1004": ("ubuntu", "debian", "10.04", "upstart", "eth0", "ifupdown"),
    "ubuntu1804": ("ubuntu", "debian", "18.04", "systemd", "eth0", "netplan"),
    "ubuntu2404": ("ubuntu", "debian", "24.04", "systemd", "enX0", "netplan"),
    "centos5": ("centos", "redhat", "5.11", "sysvinit", "eth0", "ifcfg"),
    "centos6": ("centos", "redhat", "6.10", "upstart", "eth0", "ifcfg"),
    "centos7": ("centos", "redhat", "7", "systemd", "eth0", "ifcfg"),
    "rocky8": ("rocky", "redhat", "8.9", "systemd", "eth0", "ifcfg"),
    "alma9": ("almalinux", "redhat", "9.3", "systemd", "enX0", "nm-keyfile"),
    "opensuse103": ("opensuse", "suse", "10.3", "sysvinit", "eth0", "suse-ifcfg"),
    "leap15": ("opensuse-leap", "suse", "15.5", "systemd", "eth0", "suse-ifcfg"),
    "unknown": ("gentoo", "unknown", "", "sysvinit", "eth0", "none"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_detect(tmp_path, name):
    o = detect(Guest(build(tmp_path, name)))
    assert (o.id, o.family, o.release, o.init, o.nic, o.network) == CASES[name]
    assert o.known == (name != "unknown") and o.pretty


def test_empty_tree_is_refused_as_an_image_and_generic_as_a_hook_prefix(tmp_path):
    with pytest.raises(Fatal, match="cannot tell which OS"):
        detect(Guest(str(tmp_path)))
    o = detect(Guest(str(tmp_path)), require=False)  # xen-tools' own tests hook a bare prefix
    assert (o.id, o.family, o.known) == ("unknown", "unknown", False)


def test_derivative_falls_back_on_id_like(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text('ID=linuxmint\nID_LIKE="ubuntu debian"\nVERSION_ID="21.3"\n')
    o = detect(Guest(str(tmp_path)))
    assert (o.id, o.family, o.init) == ("linuxmint", "debian", "systemd")


def test_parse_os_release_quoting():
    assert parse_os_release('A="x y"\nB=\'z\'\n# c\nC=plain\n') == {"A": "x y", "B": "z", "C": "plain"}
