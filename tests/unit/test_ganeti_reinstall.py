"""Ganeti's reinstall keeps the instance's identity (OS parameter identity=keep, the default):
read from disk 0 before the install, or the copy an unfinished reinstall saved; identity=fresh
and a first install carry nothing."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from si_xen.ganeti import install, params
from si_xen.ganeti.env import instance
from si_xen.report import Reporter

from .test_ganeti import genv


@pytest.fixture
def node(tmp_path, monkeypatch):
    """create() with the install and the disk faked: what it hands the install, what it reads."""
    s = SimpleNamespace(paths={"state_dir": str(tmp_path / "state")})
    got = SimpleNamespace(identity_dir=None, reads=[], fs="ext4", keys={"etc/ssh/ssh_host_ed25519_key": "k"})
    monkeypatch.setattr(install, "settings", lambda image=None: s)
    monkeypatch.setattr(install, "_image", lambda inst, paths, say: SimpleNamespace(name="deb", os=SimpleNamespace(pretty="Debian")))
    monkeypatch.setattr(install, "fs_type", lambda path: got.fs)

    def fake_install(inst, image, rep, s, skip=(), identity_dir=None):
        got.identity_dir = identity_dir
        got.carried = sorted(os.listdir(os.path.join(identity_dir, "etc/ssh"))) if identity_dir else []
        return SimpleNamespace(seconds=1, boot="pvgrub2")

    def read_disk(name, path, fs, dest):
        got.reads.append((path, fs))
        for p, text in got.keys.items():
            os.makedirs(os.path.dirname(os.path.join(dest, p)), exist_ok=True)
            with open(os.path.join(dest, p), "w") as f:
                f.write(text)
        return list(got.keys)

    monkeypatch.setattr(install, "install", fake_install)
    monkeypatch.setattr("si_xen.carry.read_disk", read_disk)
    got.saved = str(tmp_path / "state/carry/inst1.sixen.test")
    return got


def test_identity_is_a_parameter_defaulting_to_keep():
    assert params.value({}, "identity") == "keep"
    assert params.problems({"identity": "new"}) == ["invalid OS parameter identity='new': must be one of keep, fresh"]


def test_reinstall_keeps_disk0s_identity_and_removes_the_copy_once_installed(node):
    install.create(instance(genv(INSTANCE_REINSTALL="1")), Reporter(quiet=True))
    assert node.reads == [("/dev/xenvg/u1.disk0", "ext4")]
    assert node.identity_dir == node.saved and node.carried == ["ssh_host_ed25519_key"]
    assert not os.path.exists(node.saved) and not os.path.exists(node.saved + ".new")


@pytest.mark.parametrize("env", [{}, {"INSTANCE_REINSTALL": "1", "OSP_IDENTITY": "fresh"}])
def test_a_first_install_and_identity_fresh_carry_nothing(node, env):
    install.create(instance(genv(**env)), Reporter(quiet=True))
    assert node.reads == [] and node.identity_dir is None


def test_a_copy_saved_by_an_unfinished_reinstall_comes_first(node):
    os.makedirs(os.path.join(node.saved, "etc/ssh"))
    open(os.path.join(node.saved, "etc/ssh/ssh_host_rsa_key"), "w").close()
    install.create(instance(genv(INSTANCE_REINSTALL="1")), Reporter(quiet=True))
    assert node.reads == [], "disk 0 may hold a half-made filesystem: not read"
    assert node.carried == ["ssh_host_rsa_key"] and not os.path.exists(node.saved)


def test_a_failed_install_keeps_the_saved_copy(node, monkeypatch):
    def fails(*a, **kw):
        raise RuntimeError("killed")

    monkeypatch.setattr(install, "install", fails)
    with pytest.raises(RuntimeError):
        install.create(instance(genv(INSTANCE_REINSTALL="1")), Reporter(quiet=True))
    assert os.listdir(os.path.join(node.saved, "etc/ssh")) == ["ssh_host_ed25519_key"]


@pytest.mark.parametrize("fs,keys", [("", {"etc/ssh/ssh_host_rsa_key": "k"}), ("ext4", {})])
def test_no_filesystem_or_no_identity_on_disk0_gives_a_fresh_one(node, fs, keys):
    node.fs, node.keys = fs, keys
    install.create(instance(genv(INSTANCE_REINSTALL="1")), Reporter(quiet=True))
    assert node.identity_dir is None and not os.path.exists(node.saved) and not os.path.exists(node.saved + ".new")
