"""The Debian 12 test image as si_getimage leaves it (getimage.exclude applied: no SSH host keys,
no /etc/hostname), deployed for real: the VM's disk holds a working key pair for every key its
sshd loads, and si_mkxenvm printed and recorded exactly their fingerprints."""

from __future__ import annotations

import json
import os
import stat
import subprocess

import pytest

from tests.conftest import need_tools
from tests.lib.getimage import getimage_copy

from .harness import debugfs_cat, debugfs_ls, host_state, make_env, manifest, tree_files

pytestmark = pytest.mark.integration
ARGS = ["--memory", "512M", "--size", "2G", "--swap", "128M", "--dhcp"]
DEFAULT_KEYS = [(f"/etc/ssh/ssh_host_{t}_key", t.upper()) for t in ("rsa", "ecdsa", "ed25519")]  # no HostKey line
SITE_CONF = "# a site's own key paths\nHostKey /etc/ssh/site/host_ed25519\nHostKey /etc/ssh/ssh_host_rsa_key\n"


@pytest.fixture(scope="module")
def images(debian12_image, tmp_path_factory):
    """Two images as si_getimage leaves them: the test image, and one whose sshd names its keys."""
    need_tools("rsync", "mkfs.ext4", "mkswap", "debugfs", "losetup", "ssh-keygen")
    before = manifest(debian12_image)
    d = tmp_path_factory.mktemp("images")
    getimage_copy(debian12_image, f"{d}/gi-plain")
    assert not [n for n in os.listdir(f"{d}/gi-plain/etc/ssh") if n.startswith("ssh_host_")]
    assert not os.path.lexists(f"{d}/gi-plain/etc/hostname")
    with open(f"{d}/gi-plain/etc/ssh/sshd_config") as f:
        assert not [line for line in f if line.lower().startswith("hostkey")], "the defaults apply"
    subprocess.run(["cp", "-a", f"{d}/gi-plain", f"{d}/gi-site"], check=True)
    with open(f"{d}/gi-site/etc/ssh/sshd_config.d/50-site.conf", "w") as f:
        f.write(SITE_CONF)
    yield str(d)
    assert manifest(debian12_image) == before, "the cached test image was modified"


def dump(disk: str, gpath: str, out: str) -> os.stat_result:
    """A file of the VM's root filesystem, owner and mode kept; its stat."""
    subprocess.run(["debugfs", "-R", f'dump -p "{gpath}" {out}', disk], check=True, capture_output=True)
    assert os.path.isfile(out) and os.path.getsize(out) > 0, f"{gpath} missing from the VM"
    return os.stat(out)


def vm_keys(disk: str, paths: list[str], tmp) -> list[str]:
    """Each key pair proven (root's, 0600/0644, public half of the private one); its
    `ssh-keygen -lf` line without the bit count."""
    lines = []
    for i, gpath in enumerate(paths):
        priv, pub = f"{tmp}/k{i}", f"{tmp}/k{i}.pub"
        st, pst = dump(disk, gpath, priv), dump(disk, gpath + ".pub", pub)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 0, 0), gpath
        assert stat.S_IMODE(pst.st_mode) == 0o644, gpath
        derived = subprocess.run(["ssh-keygen", "-y", "-f", priv], capture_output=True, text=True, check=True).stdout
        with open(pub) as f:
            assert derived.split()[:2] == f.read().split()[:2], f"{gpath}.pub is not the private key's"
        lf = subprocess.run(["ssh-keygen", "-lf", pub], capture_output=True, text=True, check=True).stdout
        lines.append(lf.split(None, 1)[1].strip())
    return lines


@pytest.mark.parametrize("image,host,keys", [
    ("gi-plain", "gi01", DEFAULT_KEYS),
    ("gi-site", "gi02", [("/etc/ssh/site/host_ed25519", "ED25519"), ("/etc/ssh/ssh_host_rsa_key", "RSA")]),
], ids=["openssh-defaults", "site-hostkey-lines"])
def test_a_vm_from_an_image_without_keys_has_every_key_its_sshd_loads(images, tmp_path, image, host, keys):
    env = make_env(tmp_path / "env", images)
    before, image_before = host_state(env.base, (host,)), manifest(f"{images}/{image}")
    cp = env.mk(image, "--hostname", host, *ARGS, "--dir", env.dir, "--output", env.output, check=True)
    assert "WARNING" not in cp.stdout + cp.stderr, cp.stdout + cp.stderr
    disk = f"{env.dir}/domains/{host}/disk.img"
    have = vm_keys(disk, [k for k, _ in keys], tmp_path)
    assert [line.split()[-2:] for line in have] == [[f"si-xen:root@{host}", f"({t})"] for _, t in keys]
    listed = sorted(n.split()[-1] for n in debugfs_ls(disk, "/etc/ssh") if "ssh_host_" in n)
    assert listed == sorted(os.path.basename(k) + s for k, _ in keys if "ssh_host_" in k for s in ("", ".pub"))
    # what the user is shown, and the record, are the fingerprints of exactly these keys
    shown = [line.split(":", 1)[1].strip() for line in cp.stdout.splitlines() if line.startswith("SSH Fingerprint :")]
    assert sorted(shown) == sorted(have), cp.stdout
    rec = json.loads(env.run("lsxenvm", "--json", check=True).stdout.splitlines()[0])
    assert sorted(rec["ssh_fingerprints"]) == sorted(have)
    assert debugfs_cat(disk, "/etc/hostname") == f"{host}\n"
    env.run("rmxenvm", host, "--yes", check=True)
    assert manifest(f"{images}/{image}") == image_before, "the image was modified"
    assert host_state(env.base, (host,)) == before, "loop devices, mounts or temp dirs left behind"


def assert_refused(cp, env, want: str) -> None:
    lines = cp.stderr.strip().splitlines()
    assert cp.returncode == 1 and len(lines) == 1 and lines[0].startswith("FATAL: ") and want in lines[0], cp.stderr
    assert "Traceback" not in cp.stdout + cp.stderr
    assert tree_files(env.dir) in ([], [f"{env.dir}/domains"]) and os.listdir(env.output) == [], "nothing left"


def test_a_hostkey_whose_type_cannot_be_told_is_refused_before_anything_is_made(images, tmp_path):
    root = f"{tmp_path}/images/gi-odd"
    os.makedirs(os.path.dirname(root))
    subprocess.run(["cp", "-al", f"{images}/gi-plain", root], check=True)
    with open(f"{root}/etc/ssh/sshd_config.d/50-site.conf", "w") as f:
        f.write("\nHostKey /etc/ssh/site_key\n")
    env = make_env(tmp_path / "env", f"{tmp_path}/images")
    before = host_state(env.base, ("gi03",))
    cp = env.mk("gi-odd", "--hostname", "gi03", *ARGS, "--dir", env.dir, "--output", env.output)
    assert_refused(cp, env, "/etc/ssh/sshd_config.d/50-site.conf line 2: HostKey /etc/ssh/site_key: cannot tell the "
                            "key type from the file name (name the file after its type")
    assert host_state(env.base, ("gi03",)) == before


def test_a_key_that_cannot_be_made_ends_the_deploy_and_everything_is_removed(images, tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "ssh-keygen"  # this dom0's ssh-keygen cannot make ECDSA keys
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = ecdsa ] && { echo "ssh-keygen: ecdsa: not built in" >&2; '
                    'exit 1; }; done\nexec /usr/bin/ssh-keygen "$@"\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    env = make_env(tmp_path / "env", images)
    before = host_state(env.base, ("gi04",))
    cp = env.mk("gi-plain", "--hostname", "gi04", *ARGS, "--dir", env.dir, "--output", env.output)
    assert_refused(cp, env, f"cannot make the ecdsa SSH host key /etc/ssh/ssh_host_ecdsa_key the VM's sshd loads: "
                            f"{fake} exited 1: ssh-keygen: ecdsa: not built in")
    assert env.run("lsxenvm", "--json", check=True).stdout == "", "no VM recorded"
    assert host_state(env.base, ("gi04",)) == before, "loop devices, mounts or temp dirs left behind"
