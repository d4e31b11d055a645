import pytest

from tests.unit import fakekeygen
from tests.unit.fixups.trees import build

STATIC = dict(hostname="vm1.example.org", ip1="192.168.50.10", ip_count="1", netmask="255.255.255.0",
              gateway="192.168.50.1", nameserver="192.168.50.1 9.9.9.9", NUMPARTITIONS="2",
              PARTITION1="swap:128M:swap:::file:/x/swap.img",
              PARTITION2="disk:2048M:ext4:/:errors=remount-ro:file:/x/disk.img",
              install_source="/var/lib/systemimager/images/golden01", mac="00:16:3e:01:02:03")
DHCP = {**{k: v for k, v in STATIC.items() if k not in ("ip1", "ip_count", "gateway", "netmask", "nameserver")},
        "dhcp": "1", "hostname": "vm2"}


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
