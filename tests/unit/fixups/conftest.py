from dataclasses import replace

import pytest

from si_xen.fixups.spec import GuestSpec, Partition
from si_xen.plan import Network
from tests.unit import fakekeygen
from tests.unit.fixups.trees import build

STATIC = GuestSpec(
    hostname="vm1.example.org",
    net=Network(False, ("192.168.50.10",), "255.255.255.0", "192.168.50.1", "", ("192.168.50.1", "9.9.9.9"),
                "00:16:3e:01:02:03"),
    partitions=(Partition(1, "swap", "128M", "swap", "", "", "file", "/x/swap.img"),
                Partition(2, "disk", "2048M", "ext4", "/", "errors=remount-ro", "file", "/x/disk.img")),
    image_source="/var/lib/systemimager/images/golden01",
)
DHCP = replace(STATIC, hostname="vm2", net=Network(True, mac="00:16:3e:01:02:03"))


@pytest.fixture
def tree(tmp_path):
    def make(name):
        return build(tmp_path / name, name)

    return make


@pytest.fixture(autouse=True)
def keygen(fp, monkeypatch):
    """The identity fixup's ssh-keygen, faked (tests/unit/fakekeygen.py)."""
    fakekeygen.register(fp, monkeypatch)
    return fp
