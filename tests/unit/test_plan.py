from si_xen.plan import Disk, Network, number_disks, stable_mac
from si_xen.validate import check_mac


def test_stable_mac_is_stable_unicast_and_xen_oui():
    a, b = stable_mac("web01"), stable_mac("web01")
    assert a == b != stable_mac("web02")
    assert a.startswith("00:16:3e:") and int(a.split(":")[3], 16) < 0x80
    check_mac(a)


def test_xen_tools_numbering_swap_first_then_root_then_deeper():
    disks = number_disks([Disk("disk", "/", "ext4", 2048, "d"), Disk("var", "/var", "ext4", 512, "d"),
                          Disk("swap", "", "swap", 128, "sw")])
    assert [(d.vdev, d.mountpoint) for d in disks] == [("xvda1", ""), ("xvda2", "/"), ("xvda3", "/var")]


def test_network_prefix_and_static():
    assert Network(False, ("10.0.0.5",), "255.255.0.0").prefixlen == 16
    assert Network(True).prefixlen == 0 and not Network(True).static
