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
        env = {hostkeys.ENV: pre.ready()}
        priv, pub = hostkeys.take("ed25519", hostkeys.tag("vm1"), env)
        assert "PRIVATE KEY" in priv and pub.split()[2] == "si-xen:root@vm1"
        assert hostkeys.take("ed25519", hostkeys.tag("vm1"), env) is None, "one key serves one VM"
        assert hostkeys.take("rsa", hostkeys.tag("other"), env) is None, "a key made for another VM"
        want = subprocess.run(["ssh-keygen", "-lf", os.path.join(pre.dir, "rsa.pub")], capture_output=True,
                              text=True).stdout.split(None, 1)[1].strip()
        with open(os.path.join(pre.dir, "rsa.pub")) as f:
            assert hostkeys.fingerprint(f.read()) == want
    finally:
        pre.close()
    assert not os.path.exists(pre.dir)


def test_no_prefetch_means_none():
    assert hostkeys.take("rsa", "x", {}) is None
