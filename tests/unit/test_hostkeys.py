import base64
import os
import time

import pytest

from si_xen import hostkeys, keyfiles, sshdconfig
from si_xen.guestfs import Guest

from . import fakekeygen

# What the real `ssh-keygen -lf` printed for this key (after the bit count).
ED25519_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBN/Sy+Js2zeH9VTrVxcTafjSnGKpMLLgRRjdM+bmlOW si-xen:root@vm1"
ED25519_FP = "SHA256:3Y3NinK7jvy4dDN7Uf0wr2fzJrobGo6cRlGeg9envHM si-xen:root@vm1 (ED25519)"


@pytest.fixture
def keygen(fp, monkeypatch):
    fakekeygen.register(fp, monkeypatch)
    return fp


def test_fingerprint_is_ssh_keygens():
    assert keyfiles.fingerprint(ED25519_PUB) == ED25519_FP


def test_prefetched_keys_are_taken_once_and_fingerprinted_like_ssh_keygen(tmp_path, keygen):
    etc = tmp_path / "img" / "etc" / "ssh"
    etc.mkdir(parents=True)
    for t in ("rsa", "ed25519", "xmss"):
        (etc / f"ssh_host_{t}_key").write_text("old")
    types = sshdconfig.key_types(Guest(str(tmp_path / "img")))
    assert sorted(types) == ["ed25519", "rsa"]
    pre = hostkeys.Prefetch(types, "vm1")
    try:
        keys = pre.ready()
        priv, pub = hostkeys.take("ed25519", hostkeys.tag("vm1"), keys)
        assert "PRIVATE KEY" in priv and pub.split()[2] == "si-xen:root@vm1"
        assert hostkeys.take("ed25519", hostkeys.tag("vm1"), keys) is None, "one key serves one VM"
        assert hostkeys.take("rsa", hostkeys.tag("other"), keys) is None, "a key made for another VM"
        with open(os.path.join(pre.dir, "rsa.pub")) as f:
            assert keyfiles.fingerprint(f.read()).endswith(" si-xen:root@vm1 (RSA)")
        calls = [list(c) for c in keygen.calls]
        assert [c[:5] for c in calls if "rsa" in c] == [["chrt", "--idle", "0", "/usr/bin/ssh-keygen", "-q"]], \
            "the slow key takes idle CPU while a copy runs"
        assert [c[:4] for c in calls if "ed25519" in c] == [["/usr/bin/ssh-keygen", "-q", "-t", "ed25519"]]
    finally:
        pre.close()
    assert not os.path.exists(pre.dir)


def test_a_slow_key_still_running_when_wanted_gets_a_normal_share(tmp_path, fp, monkeypatch):
    def slow(p):  # still making its key when the deploy asks for it
        time.sleep(0.5)
        fakekeygen._make(p.args)

    fp.register(["chrt", "--idle", "0", "/usr/bin/ssh-keygen", fp.any()], callback=slow)
    fakekeygen.register(fp, monkeypatch)
    pre = hostkeys.Prefetch(["rsa", "ed25519"], "vm1")
    try:
        keys = pre.ready()
        assert hostkeys.take("rsa", hostkeys.tag("vm1"), keys) is not None
    finally:
        pre.close()
    raised = [list(c) for c in fp.calls if list(c[:4]) == ["chrt", "--other", "-p", "0"]]
    assert len(raised) == 1, "raised once, when the deploy waits for it"


def test_no_prefetch_means_none():
    assert hostkeys.take("rsa", "x", None) is None


def test_stock_is_filled_with_spare_cpu_and_each_key_serves_one_vm(tmp_path, keygen):
    stock = hostkeys.Stock(str(tmp_path))
    refill = stock.refill()
    assert len(refill.running) == refill.spare, "one key per spare core at a time"
    while refill.running:
        for _, p in refill.running:
            p.wait()
        refill.tick()  # keeps the done ones, starts the next
    stock.settle(refill)
    assert oct(os.stat(stock.dir).st_mode & 0o777) == "0o700"
    assert len(stock._keys("rsa")) == hostkeys.STOCK_SIZE
    assert not stock.refill(), "a full stock makes nothing"
    pre = hostkeys.Prefetch(["rsa", "ed25519"], "vm7", stock)
    try:
        keys = pre.ready()
        priv, pub = hostkeys.take("rsa", hostkeys.tag("vm7"), keys)
        assert pub.split()[2] == "si-xen:root@vm7", "a stock key gets the VM's name"
        assert "-c" not in [a for c in keygen.calls for a in c], "renamed without a process"
        assert hostkeys.take("ed25519", hostkeys.tag("vm7"), keys) is not None
    finally:
        pre.close()
    assert len(stock._keys("rsa")) == hostkeys.STOCK_SIZE - 1
    assert not [n for n in os.listdir(stock.dir) if n.startswith(".")], "nothing half-made left"


def full_stock(tmp_path) -> hostkeys.Stock:
    stock = hostkeys.Stock(str(tmp_path))
    refill = stock.refill()
    while refill:
        for _, p in refill.running:
            p.wait()
        refill.tick()
    return stock


def test_keys_no_guest_was_given_go_back_to_the_stock(tmp_path, keygen):
    stock = full_stock(tmp_path)
    for _ in range(hostkeys.STOCK_SIZE + 2):  # FATAL checks after the prefetch: ready() never came
        hostkeys.Prefetch(["rsa", "ed25519"], "vm1", stock).close()
    assert len(stock._keys("rsa")) == hostkeys.STOCK_SIZE, "bad input costs no stock key"
    assert not [n for n in os.listdir(stock.dir) if n.startswith(".")]
    pre = hostkeys.Prefetch(["rsa"], "vm2", stock)
    with open(os.path.join(pre.ready(), "rsa")) as f:  # ready(): the keys are the guest's now
        priv = f.read()
    pre.close()
    assert len(stock._keys("rsa")) == hostkeys.STOCK_SIZE - 1, "a key handed to a guest never comes back"
    assert priv not in [open(os.path.join(stock.dir, n)).read() for n in stock._keys("rsa")]


def test_settle_discards_unfinished_keys(tmp_path, fp, monkeypatch):
    fakekeygen.register(fp, monkeypatch, running=True)
    stock = hostkeys.Stock(str(tmp_path))
    refill = stock.refill()
    started = list(refill.running)
    stock.settle(refill)  # at once: all still running
    assert started and all(p.returncode == -9 for _, p in started), "killed, not waited for"
    names = os.listdir(stock.dir)
    assert not [n for n in names if n.startswith(".new-")]
    assert all(n + ".pub" in names for n in names if not n.endswith(".pub"))
    assert [c[:4] for c in fp.calls][:1] == [["chrt", "--idle", "0", "/usr/bin/ssh-keygen"]], "stock: spare CPU only"


@pytest.mark.parametrize("kind,fields", [("ssh-rsa", 6), ("ssh-ed25519", 2), ("ecdsa-sha2-nistp384", 3)])
def test_recomment_rewrites_both_halves_and_keeps_the_key(tmp_path, kind, fields):
    priv, pub = fakekeygen.openssh_key(kind, fields, "si-xen:root@localhost")
    path = tmp_path / "k"
    path.write_text(priv)
    (tmp_path / "k.pub").write_text(pub)
    assert keyfiles.recomment(str(path), "si-xen:root@vm9")
    new_priv, new_pub = path.read_text(), (tmp_path / "k.pub").read_text()
    assert new_pub.split() == [*pub.split()[:2], "si-xen:root@vm9"]
    blob = base64.b64decode("".join(new_priv.splitlines()[1:-1]))
    old = base64.b64decode("".join(priv.splitlines()[1:-1]))
    assert b"si-xen:root@vm9" in blob and b"localhost" not in blob
    section = keyfiles._strings(old, keyfiles._strings(old, 15, 3) + 4, 1) + 4  # after magic, ciphers, public key
    cut = old.index(b"si-xen:root@localhost") - 4
    assert blob[:section - 4] == old[:section - 4], "header and public key unchanged"
    assert blob[section:cut] == old[section:cut], "check words and key material unchanged"
    assert (len(blob) - section) % 8 == 0, "padded to the cipher block"
    assert all(len(line) <= 70 for line in new_priv.splitlines())


@pytest.mark.parametrize("text", ["not a key", "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
                                  "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n"])
def test_recomment_refuses_what_it_cannot_parse(tmp_path, text):
    (tmp_path / "k").write_text(text)
    (tmp_path / "k.pub").write_text("ssh-rsa AAAA old\n")
    assert not keyfiles.recomment(str(tmp_path / "k"), "new")
    assert (tmp_path / "k").read_text() == text, "left as it was"
