import os
import subprocess

import pytest

from si_xen import hostkeys
from si_xen.guestfs import Guest
from tests.conftest import need_tools


@pytest.fixture
def keygen():
    need_tools("ssh-keygen")


def test_prefetched_keys_are_taken_once_and_fingerprinted_like_ssh_keygen(tmp_path, keygen):
    etc = tmp_path / "img" / "etc" / "ssh"
    etc.mkdir(parents=True)
    for t in ("rsa", "ed25519", "xmss"):
        (etc / f"ssh_host_{t}_key").write_text("old")
    types = hostkeys.image_key_types(Guest(str(tmp_path / "img")))
    assert sorted(types) == ["ed25519", "rsa"]
    pre = hostkeys.Prefetch(types, "vm1")
    try:
        keys = pre.ready()
        priv, pub = hostkeys.take("ed25519", hostkeys.tag("vm1"), keys)
        assert "PRIVATE KEY" in priv and pub.split()[2] == "si-xen:root@vm1"
        assert hostkeys.take("ed25519", hostkeys.tag("vm1"), keys) is None, "one key serves one VM"
        assert hostkeys.take("rsa", hostkeys.tag("other"), keys) is None, "a key made for another VM"
        want = subprocess.run(["ssh-keygen", "-lf", os.path.join(pre.dir, "rsa.pub")], capture_output=True,
                              text=True).stdout.split(None, 1)[1].strip()
        with open(os.path.join(pre.dir, "rsa.pub")) as f:
            assert hostkeys.fingerprint(f.read()) == want
    finally:
        pre.close()
    assert not os.path.exists(pre.dir)


def test_no_prefetch_means_none():
    assert hostkeys.take("rsa", "x", None) is None


def test_stock_is_filled_with_spare_cpu_and_each_key_serves_one_vm(tmp_path, keygen):
    stock = hostkeys.Stock(str(tmp_path))
    started = stock.refill()
    assert len(started) == hostkeys.STOCK_SIZE * len(hostkeys.STOCK_TYPES)
    for _, p in started:
        p.wait()
    stock.settle(started)
    assert oct(os.stat(stock.dir).st_mode & 0o777) == "0o700"
    assert len(stock._keys("rsa")) == hostkeys.STOCK_SIZE
    assert stock.refill() == [], "a full stock makes nothing"
    pre = hostkeys.Prefetch(["rsa", "ed25519"], "vm7", stock)
    try:
        keys = pre.ready()
        priv, pub = hostkeys.take("rsa", hostkeys.tag("vm7"), keys)
        assert pub.split()[2] == "si-xen:root@vm7", "a stock key gets the VM's name"
        assert hostkeys.take("ed25519", hostkeys.tag("vm7"), keys) is not None
    finally:
        pre.close()
    assert len(stock._keys("rsa")) == hostkeys.STOCK_SIZE - 1
    assert not [n for n in os.listdir(stock.dir) if n.startswith(".")], "nothing half-made left"


def test_settle_discards_unfinished_keys(tmp_path, keygen):
    stock = hostkeys.Stock(str(tmp_path))
    started = stock.refill()
    stock.settle(started)  # at once: most are still running
    names = os.listdir(stock.dir)
    assert not [n for n in names if n.startswith(".new-")]
    assert all(n + ".pub" in names for n in names if not n.endswith(".pub"))
