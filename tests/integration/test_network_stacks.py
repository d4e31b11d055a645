"""Real deploys of golden clients that run NetworkManager, systemd-networkd or netplan with the
NetworkManager renderer, and of images whose
os-release is garbage: one stack configured for enX0, the others disabled, golden files kept
whole, the OS said once; an image nothing identifies is one FATAL with nothing left.

Each image is a hard-link copy of the Debian 12 test image whose changed entries are replaced
(never written through); nothing is installed and no guest binary runs: a golden client's
stack is its unit's enablement link, a placeholder daemon and its config file."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager

import pytest

from tests.conftest import need_tools

from .harness import debugfs_cat, debugfs_ls, host_state, make_env, manifest, tree_files

pytestmark = pytest.mark.integration
HOST = "stack01"
ARGS = ["--hostname", HOST, "--memory", "512M", "--size", "2G", "--swap", "0",
        "--ip", "192.0.2.10/24", "--gateway", "192.0.2.1"]
WANTS = "etc/systemd/system/multi-user.target.wants"
KEPT = "/var/lib/si-xen/golden"
KEYFILE = ("[connection]\nid=golden\nuuid=0e3f1c1a-5c1e-4a4e-9f77-2b0d6a1d2c3e\ntype=ethernet\ninterface-name=ens3\n\n"
           "[ethernet]\nmac-address=52:54:00:12:34:56\n\n[ipv4]\naddress1=10.9.8.7/24\nmethod=manual\n")
NETWORK = "[Match]\nName=ens3\n\n[Network]\nAddress=10.9.8.7/24\nGateway=10.9.8.1\n"
NM_KEYFILE = "etc/NetworkManager/system-connections/golden.nmconnection"
NETWORKD_FILE = "etc/systemd/network/10-golden.network"
LO_ONLY = "auto lo\niface lo inet loopback\n"

NETPLAN_FILE = "etc/netplan/01-golden.yaml"
NETPLAN = "network:\n  version: 2\n  renderer: NetworkManager\n  ethernets:\n    ens3:\n      addresses: [10.9.8.7/24]\n"
NM = {f"{WANTS}/NetworkManager.service": ("link", "/lib/systemd/system/NetworkManager.service"),
      "usr/lib/systemd/system/NetworkManager.service": "[Service]\nExecStart=/usr/sbin/NetworkManager --no-daemon\n",
      "usr/sbin/NetworkManager": "#!/bin/sh\n"}
# name: guest path -> text, or ("link", target); None removes the entry
GOLDEN = {
    "nm-golden": {**NM, NM_KEYFILE: KEYFILE, "etc/network/interfaces": LO_ONLY},
    "netplan-nm-golden": {**NM, "usr/sbin/netplan": "#!/bin/sh\n", NETPLAN_FILE: NETPLAN, NM_KEYFILE: KEYFILE,
                          "etc/network/interfaces": LO_ONLY},
    "networkd-golden": {
        f"{WANTS}/systemd-networkd.service": ("link", "/lib/systemd/system/systemd-networkd.service"),
        NETWORKD_FILE: NETWORK, "etc/network/interfaces": LO_ONLY},
    "garbage-os-release": {"usr/lib/os-release": "\x01\x02 not an os-release\nPRETTY_NAME\n"},
    "unidentified": {"usr/lib/os-release": "\x01\x02 not an os-release\n", "etc/debian_version": None},
}


@pytest.fixture(scope="module")
def image(debian12_image):
    need_tools("rsync", "mkfs.ext4", "debugfs", "losetup", "ssh-keygen")
    before = manifest(debian12_image)
    yield debian12_image
    assert manifest(debian12_image) == before, "the cached test image was modified"


def golden(image: str, tmp_path, name: str) -> str:
    root = str(tmp_path / "images" / name)
    os.makedirs(os.path.dirname(root))
    subprocess.run(["cp", "-al", image, root], check=True)
    for gpath, entry in GOLDEN[name].items():
        p = os.path.join(root, gpath)
        if os.path.lexists(p):
            os.unlink(p)  # a hard link shared with the cached image: replaced, never written through
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if isinstance(entry, tuple):
            os.symlink(entry[1], p)
        elif entry is not None:
            with open(p, "w") as f:
                f.write(entry)
    return root


@contextmanager
def deploy(image, tmp_path, name):
    """si_mkxenvm on golden image ``name``; afterwards the VM removed, nothing left, image intact."""
    root = golden(image, tmp_path, name)
    env = make_env(tmp_path / "env", os.path.dirname(root))
    before, image_before = host_state(env.base, (HOST,)), manifest(root)
    cp = env.mk(root, *ARGS, "--dir", env.dir, "--output", env.output)
    assert "Traceback" not in cp.stdout + cp.stderr, cp.stderr
    try:
        yield cp, f"{env.dir}/domains/{HOST}/disk.img"
    finally:
        if cp.returncode == 0:
            env.run("rmxenvm", HOST, "--yes", check=True)
    assert tree_files(env.dir) in ([], [f"{env.dir}/domains"]) and os.listdir(env.output) == []
    assert manifest(root) == image_before, "the image was modified"
    assert host_state(env.base, (HOST,)) == before, "loop devices, mounts or temp dirs left behind"


def names(disk: str, d: str) -> str:
    return "\n".join(debugfs_ls(disk, d))


def assert_only(disk: str, stack_file: str, kept: dict[str, str]):
    """``stack_file`` is the one config naming the VM's address; the golden files are kept whole."""
    for path, text in kept.items():
        assert debugfs_cat(disk, f"{KEPT}/{path}") == text, path
        assert f"file\t/{path}\t{KEPT}/{path}\n" in debugfs_cat(disk, f"{KEPT}/MANIFEST")
    assert "192.0.2.10" in debugfs_cat(disk, stack_file)
    for other in ("/etc/network/interfaces", "/etc/netplan/01-netcfg.yaml",
                  "/etc/NetworkManager/system-connections/si-xen-enX0.nmconnection",
                  "/etc/systemd/network/10-si-xen-enX0.network"):
        if other != stack_file:
            assert "192.0.2.10" not in (debugfs_cat(disk, other) or ""), other


@pytest.mark.parametrize("name", ["nm-golden", "networkd-golden", "netplan-nm-golden"])
def test_golden_client_gets_its_own_stack_only(image, tmp_path, name):
    with deploy(image, tmp_path, name) as (cp, disk):
        assert cp.returncode == 0, cp.stdout + cp.stderr
        check_stacks(disk, name)


def check_stacks(disk: str, name: str):
    wants = names(disk, f"/{WANTS}")
    assert "networking.service" not in wants  # ifupdown's unit: disabled, recorded to be restored
    manifest_text = debugfs_cat(disk, f"{KEPT}/MANIFEST")
    for wanted_by in (WANTS, "etc/systemd/system/network-online.target.wants"):
        assert f"link\t/{wanted_by}/networking.service\t/lib/systemd/system/networking.service\n" in manifest_text
        assert "networking.service" not in names(disk, f"/{wanted_by}")
    assert "iface lo inet loopback" in debugfs_cat(disk, "/etc/network/interfaces")
    if name == "nm-golden":
        assert "NetworkManager.service" in wants
        ours = "/etc/NetworkManager/system-connections/si-xen-enX0.nmconnection"
        assert "interface-name=enX0" in debugfs_cat(disk, ours) and "address1=192.0.2.10/24,192.0.2.1" in debugfs_cat(disk, ours)
        assert names(disk, "/etc/NetworkManager/system-connections").count(".nmconnection") == 1
        assert_only(disk, ours, {NM_KEYFILE: KEYFILE})
    elif name == "netplan-nm-golden":
        assert "NetworkManager.service" in wants  # the renderer netplan hands the NIC to stays
        ours = "/etc/netplan/01-netcfg.yaml"
        assert "renderer: NetworkManager" in debugfs_cat(disk, ours) and "    enX0:" in debugfs_cat(disk, ours)
        assert "golden" not in names(disk, "/etc/netplan") and "golden" not in names(disk, "/etc/NetworkManager/system-connections")
        assert_only(disk, ours, {NETPLAN_FILE: NETPLAN, NM_KEYFILE: KEYFILE})
    else:
        assert "systemd-networkd.service" in wants
        ours = "/etc/systemd/network/10-si-xen-enX0.network"
        assert "Name=enX0" in debugfs_cat(disk, ours) and "Address=192.0.2.10/24" in debugfs_cat(disk, ours)
        assert debugfs_cat(disk, f"/{NETWORKD_FILE}") in ("", None)
        assert_only(disk, ours, {NETWORKD_FILE: NETWORK})


def test_garbage_os_release_is_debian_by_its_debian_version(image, tmp_path):
    with deploy(image, tmp_path, "garbage-os-release") as (cp, disk):
        assert cp.returncode == 0, cp.stdout + cp.stderr
        out = cp.stdout + cp.stderr
        assert "unknown OS" not in out and "/run/si-xen" not in out and "Debian GNU/Linux 12" in out
        ifaces = debugfs_cat(disk, "/etc/network/interfaces")
        assert "iface enX0 inet static" in ifaces and "address 192.0.2.10" in ifaces and "eth0" not in ifaces


def test_unidentified_image_is_one_fatal(image, tmp_path):
    with deploy(image, tmp_path, "unidentified") as (cp, _):
        lines = cp.stderr.strip().splitlines()
        assert cp.returncode == 1 and len(lines) == 1 and lines[0].startswith("FATAL: "), cp.stderr
        assert "read /etc/os-release" in lines[0] and "/etc/debian_version" in lines[0]
        assert "/run/si-xen" not in lines[0]
