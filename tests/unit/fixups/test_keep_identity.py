"""The identity fixup run again by an update (keep_identity: the VM keeps what makes it itself)
and by a rebuild (identity_dir: the old VM's carried keys and machine-id written), every family."""

import os
import stat
from dataclasses import replace

import pytest

from si_xen import hostkeys
from si_xen.fixups import run_all
from tests.unit.fixups.conftest import STATIC
from tests.unit.fixups.trees import TREES, build

SEED, LEASE = "var/lib/systemd/random-seed", "var/lib/dhcp/dhclient.eth0.leases"
DEFAULT_KEYS = [f"etc/ssh/ssh_host_{t}_key" for t in ("rsa", "ecdsa", "ed25519")]  # sshd_config without HostKey


def _put(root, gpath, data: bytes, mode=0o644):
    p = os.path.join(root, gpath)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(data)
    os.chmod(p, mode)


def _get(root, gpath):
    p = os.path.join(root, gpath)
    if not os.path.lexists(p) or os.path.islink(p):
        return None
    with open(p, "rb") as f:
        return f.read(), stat.S_IMODE(os.lstat(p).st_mode)


def _vm(tmp_path, name):
    """A VM that has run: sshd loading OpenSSH's default keys, its own machine-id, a seed, a lease."""
    root = build(tmp_path / "vm", name)
    _put(root, "etc/ssh/sshd_config", b"UsePAM yes\n")
    _put(root, "etc/machine-id", b"0123456789abcdef0123456789abcdef\n", 0o444)
    _put(root, SEED, b"\x00\x01seed", 0o600)
    _put(root, LEASE, b"lease {}\n")
    return root


def _identity(root, spec):
    changes = []
    run_all(root, spec, only=["identity"], log=changes.append)
    return changes


@pytest.mark.parametrize("name", sorted(TREES))
def test_an_update_keeps_the_vms_identity_and_makes_only_a_key_it_lacks(tmp_path, name):
    root = _vm(tmp_path, name)
    for p in ("etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub"):
        if os.path.lexists(os.path.join(root, p)):
            os.unlink(os.path.join(root, p))
    kept = ["etc/machine-id", SEED, LEASE] + [p for k in os.listdir(os.path.join(root, "etc/ssh"))
                                               if k.startswith("ssh_host_") for p in [f"etc/ssh/{k}"]]
    before = {p: _get(root, p) for p in kept}
    _identity(root, replace(STATIC, keep_identity=True))
    assert {p: _get(root, p) for p in kept} == before  # byte-equal, modes too: nothing remade
    pub = _get(root, "etc/ssh/ssh_host_ed25519_key.pub")
    assert pub is not None and pub[0].split()[-1].decode() == hostkeys.tag(STATIC.hostname)


@pytest.mark.parametrize("name", sorted(TREES))
def test_without_keep_identity_the_same_vm_gets_a_fresh_one(tmp_path, name):
    """The other side of the test above: what keep_identity prevents."""
    root = _vm(tmp_path, name)
    _identity(root, STATIC)
    assert _get(root, "etc/machine-id")[0] == b"" and _get(root, SEED) is None and _get(root, LEASE) is None


def _carry(tmp_path, dbus_file=True):
    d = str(tmp_path / "carry")
    files = {"etc/ssh/ssh_host_rsa_key": (b"-----BEGIN OPENSSH PRIVATE KEY-----\nold\xff\n", 0o600),
             "etc/ssh/ssh_host_rsa_key.pub": (b"ssh-rsa AAAAold root@web01\n", 0o640),
             "etc/machine-id": (b"fedcba9876543210fedcba9876543210\n", 0o444)}
    if dbus_file:
        files["var/lib/dbus/machine-id"] = (b"fedcba9876543210fedcba9876543210\n", 0o644)
    for p, (data, mode) in files.items():
        _put(d, p, data, mode)
    os.symlink("/etc/passwd", os.path.join(d, "etc/ssh/ssh_host_dsa_key"))  # never carried: a link
    return d, files


@pytest.mark.parametrize("name", sorted(TREES))
def test_a_rebuild_writes_the_carried_identity_and_makes_keys_not_carried(tmp_path, name):
    root = _vm(tmp_path, name)
    d, files = _carry(tmp_path)
    changes = _identity(root, replace(STATIC, identity_dir=d))
    for p, want in files.items():
        assert _get(root, p) == want, p  # byte-equal, mode kept
    for p in DEFAULT_KEYS[1:]:  # sshd loads them, none carried: made for the VM, and said
        assert _get(root, p + ".pub")[0].split()[-1].decode() == hostkeys.tag(STATIC.hostname)
    assert any("ecdsa SSH host key" in c for c in changes)
    assert not any("ssh_host_dsa_key over" in c for c in changes)  # a link in the carry dir is no file of it
    assert _get(root, SEED) is None and _get(root, LEASE) is None  # the new tree's golden seeds go


def test_a_rebuild_without_a_carried_dbus_id_links_it_to_the_carried_machine_id(tmp_path):
    root = _vm(tmp_path, "debian12")
    _put(root, "var/lib/dbus/machine-id", b"golden\n")
    d, _ = _carry(tmp_path, dbus_file=False)
    _identity(root, replace(STATIC, identity_dir=d))
    assert os.readlink(os.path.join(root, "var/lib/dbus/machine-id")) == "/etc/machine-id"
    assert _get(root, "etc/machine-id")[0] == b"fedcba9876543210fedcba9876543210\n"


def test_a_rebuild_writes_the_carried_keys_with_their_owner(tmp_path):
    """RHEL's host keys are root:ssh_keys 0640: written as root:root 0640, sshd would refuse them
    ("UNPROTECTED PRIVATE KEY FILE"). The carry dir holds the guest's numeric owner; it goes back."""
    root = _vm(tmp_path, "alma9")
    d, files = _carry(tmp_path)
    key = os.path.join(d, "etc/ssh/ssh_host_rsa_key")
    os.chmod(key, 0o640)
    os.chown(key, 0, 998)  # the guest's ssh_keys, a number the host may not know
    _identity(root, replace(STATIC, identity_dir=d))
    st = os.lstat(os.path.join(root, "etc/ssh/ssh_host_rsa_key"))
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 998, 0o640)
    assert os.lstat(os.path.join(root, "etc/machine-id")).st_gid == 0
