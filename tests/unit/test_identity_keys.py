"""Identity from nothing: an image as si_getimage leaves it (no SSH host keys, no /etc/hostname)
gets every host key its sshd loads, read from its sshd_config as sshd reads it."""

import os
import stat
from dataclasses import replace

import pytest

from si_xen import hostkeys, keyfiles, proc, sshdconfig
from si_xen.distros import detect
from si_xen.errors import Fatal
from si_xen.fixups import run_all
from si_xen.guestfs import Guest
from tests.unit import fakekeygen
from tests.unit.fixups.conftest import STATIC
from tests.unit.fixups.trees import TREES, build

DEBIAN12_SSHD = "Include /etc/ssh/sshd_config.d/*.conf\n\nKbdInteractiveAuthentication no\nUsePAM yes\n" \
                "#HostKey /etc/ssh/ssh_host_rsa_key\nSubsystem\tsftp\t/usr/lib/openssh/sftp-server\n"
TAG = hostkeys.tag(STATIC.hostname)
DEFAULTS = [(f"/etc/ssh/ssh_host_{t}_key", t) for t in ("rsa", "ecdsa", "ed25519")]  # OpenSSH's, no HostKey line


@pytest.fixture
def keygen(fp, monkeypatch):
    fakekeygen.register(fp, monkeypatch)
    return fp


def write(root, gpath, text):
    p = os.path.join(root, gpath.lstrip("/"))
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        f.write(text)


def read(root, gpath):
    with open(os.path.join(root, gpath.lstrip("/"))) as f:
        return f.read()


def getimage_tree(tmp_path, sshd=DEBIAN12_SSHD) -> str:
    """The debian12 tree minus what getimage.exclude drops (host keys, /etc/hostname)."""
    root = build(tmp_path / "guest", "debian12")
    for n in os.listdir(os.path.join(root, "etc/ssh")):
        os.unlink(os.path.join(root, "etc/ssh", n))
    os.unlink(os.path.join(root, "etc/hostname"))
    write(root, "/etc/ssh/sshd_config", sshd)
    os.makedirs(os.path.join(root, "etc/ssh/sshd_config.d"))
    return root


def identity(root, spec=STATIC, log=None):
    return run_all(root, spec, only=["hostname", "identity"], log=log or (lambda m: None))


def assert_key(root, gpath, ktype):
    priv, pub = os.path.join(root, gpath.lstrip("/")), os.path.join(root, gpath.lstrip("/") + ".pub")
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600 and os.stat(priv).st_uid == os.getuid(), gpath
    assert stat.S_IMODE(os.stat(pub).st_mode) == 0o644, gpath
    assert read(root, gpath).startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    algo, _, comment = read(root, gpath + ".pub").split()
    assert keyfiles.pub_type(algo.encode()) == ktype and comment == TAG, gpath


def test_an_image_without_keys_gets_opensshs_three_and_its_hostname(tmp_path, keygen):
    root = getimage_tree(tmp_path)
    identity(root)
    for path, t in DEFAULTS:
        assert_key(root, path, t)
    assert read(root, "/etc/hostname") == "vm1\n", "/etc/hostname made though the image had none"
    # no sshd_config, no sshd: nothing loads keys, only the image's own are renewed
    other = getimage_tree(tmp_path / "other")
    os.unlink(os.path.join(other, "etc/ssh/sshd_config"))
    write(other, "/etc/ssh/ssh_host_ed25519_key", "old")
    identity(other)
    assert sorted(os.listdir(os.path.join(other, "etc/ssh"))) == ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub",
                                                                    "sshd_config.d"]


def test_hostkey_lines_and_includes_are_read_as_sshd_reads_them(tmp_path, keygen):
    root = getimage_tree(tmp_path, sshd=(
        "Include sshd_config.d/*.conf\n"  # relative to /etc/ssh
        "hostkey=keys/host_rsa  # relative; '=' form; any case\n"
        "Match User backup\n"
        "    HostKey /etc/ssh/match_only_ecdsa_key\n"
        "    Include /etc/ssh/in_match.conf\n"
        "Match all\n"
        'HostKey "/srv/ssh keys/ed25519 key"\n'
        "HostKey /etc/ssh/keys/host_rsa\n"))  # the same key twice: made once
    write(root, "/etc/ssh/sshd_config.d/20-b.conf", "HostKey /etc/ssh/b_ecdsa_key\n")
    write(root, "/etc/ssh/sshd_config.d/10-a.conf",
          "HOSTKEY /etc/ssh/a_ed25519_key\nMatch Address 10.0.0.0/8\nHostKey /etc/ssh/a_match_rsa_key\n")
    write(root, "/etc/ssh/sshd_config.d/.hidden.conf", "HostKey /etc/ssh/hidden_rsa_key\n")  # glob(3) skips it
    write(root, "/etc/ssh/sshd_config.d/30-c.conf.disabled", "HostKey /etc/ssh/disabled_rsa_key\n")
    write(root, "/etc/ssh/in_match.conf", "Match all\nHostKey /etc/ssh/never_rsa_key\n")  # from a Match: never on
    write(root, "/etc/ssh/ssh_host_dsa_key", "old")  # a key the image has and sshd does not load
    identity(root)
    want = [("/etc/ssh/a_ed25519_key", "ed25519", True), ("/etc/ssh/b_ecdsa_key", "ecdsa", True),
            ("/etc/ssh/keys/host_rsa", "rsa", True), ("/srv/ssh keys/ed25519 key", "ed25519", True),
            ("/etc/ssh/ssh_host_dsa_key", "dsa", False)]
    for path, t, _ in want:
        assert_key(root, path, t)
    for name in ("match_only_ecdsa_key", "a_match_rsa_key", "hidden_rsa_key", "disabled_rsa_key", "never_rsa_key",
                 "ssh_host_rsa_key", "ssh_host_ecdsa_key", "ssh_host_ed25519_key"):
        assert not os.path.lexists(os.path.join(root, "etc/ssh", name)), name
    assert [(k.path, k.type, k.loaded) for k in sshdconfig.vm_keys(Guest(root))] == want
    assert sshdconfig.key_types(Guest(root)) == ["ed25519", "ecdsa", "rsa", "dsa"]


def test_a_key_type_the_name_does_not_tell_comes_from_the_images_public_half_or_is_fatal(tmp_path, keygen):
    root = getimage_tree(tmp_path)
    write(root, "/etc/ssh/sshd_config.d/10-a.conf", "# site keys\nHostKey /etc/ssh/mykey\n")
    with pytest.raises(Fatal, match=r"^/etc/ssh/sshd_config.d/10-a.conf line 2: HostKey /etc/ssh/mykey: "
                                    r"cannot tell the key type from the file name \(name the file after its type"):
        identity(root)
    assert not os.path.exists(os.path.join(root, "etc/ssh/mykey"))
    write(root, "/etc/ssh/mykey.pub", "ecdsa-sha2-nistp256 AAAAold root@golden01\n")
    identity(root)
    assert_key(root, "/etc/ssh/mykey", "ecdsa")


def test_links_out_of_the_guest_root_are_resolved_inside_it(tmp_path, keygen):
    dom0 = tmp_path / "dom0"
    dom0.mkdir()
    (dom0 / "evil.conf").write_text("HostKey /etc/ssh/evil_rsa_key\n")
    root = getimage_tree(tmp_path, sshd=f"Include {dom0}/*.conf\nInclude /etc/ssh/sshd_config.d/*.conf\n")
    os.symlink(str(dom0 / "evil.conf"), os.path.join(root, "etc/ssh/sshd_config.d/50-evil.conf"))
    write(root, "/etc/ssh/sshd_config.d/10-a.conf", "HostKey /etc/ssh/keys/host_ed25519_key\n")
    os.symlink(str(dom0), os.path.join(root, "etc/ssh/keys"))  # the dom0's directory, by its host path
    identity(root)
    assert sorted(os.listdir(dom0)) == ["evil.conf"] and (dom0 / "evil.conf").read_text().startswith("HostKey")
    assert_key(root, f"{dom0}/host_ed25519_key", "ed25519")  # where the guest's own link leads, in the guest
    assert [k.path for k in sshdconfig.vm_keys(Guest(root))] == ["/etc/ssh/keys/host_ed25519_key"]


def failing_keygen(fp, monkeypatch, failing=("rsa", "ecdsa", "ed25519", "dsa")):
    monkeypatch.setattr(proc, "which", lambda p: f"/usr/bin/{p}" if p == "ssh-keygen" else None)
    for t in failing:
        fp.register(["/usr/bin/ssh-keygen", "-q", "-t", t, fp.any()], returncode=1,
                    stderr=f"ssh-keygen: unknown key type {t}\n", occurrences=10)
    fp.register(["/usr/bin/ssh-keygen", fp.any()], callback=lambda p: fakekeygen._make(p.args), occurrences=10)


def test_a_key_sshd_loads_that_cannot_be_made_is_fatal(tmp_path, fp, monkeypatch):
    failing_keygen(fp, monkeypatch, failing=("ecdsa",))
    root = getimage_tree(tmp_path)
    with pytest.raises(Fatal) as e:
        identity(root)
    assert str(e.value) == ("cannot make the ecdsa SSH host key /etc/ssh/ssh_host_ecdsa_key the VM's sshd loads: "
                            "/usr/bin/ssh-keygen exited 1: ssh-keygen: unknown key type ecdsa "
                            "(check that this host's ssh-keygen makes such keys)")


def test_a_key_sshd_does_not_load_that_cannot_be_made_is_removed_with_a_warning(tmp_path, fp, monkeypatch):
    failing_keygen(fp, monkeypatch, failing=("dsa",))
    root = getimage_tree(tmp_path)
    write(root, "/etc/ssh/ssh_host_dsa_key", "golden")
    write(root, "/etc/ssh/ssh_host_dsa_key.pub", "ssh-dss AAAAgolden root@golden01\n")
    said = []
    identity(root, log=said.append)
    for path, t in DEFAULTS:
        assert_key(root, path, t)
    assert not os.path.lexists(os.path.join(root, "etc/ssh/ssh_host_dsa_key"))
    assert [m for m in said if m.startswith("WARNING")] == [
        "WARNING: identity: cannot make a dsa host key (/usr/bin/ssh-keygen exited 1: ssh-keygen: unknown key type "
        "dsa); the cloned /etc/ssh/ssh_host_dsa_key (which sshd does not load) is removed"]


def test_prefetched_keys_cover_an_image_without_keys_so_the_fixup_runs_no_ssh_keygen(tmp_path, keygen):
    root = getimage_tree(tmp_path)
    stock = hostkeys.Stock(str(tmp_path / "state"))
    os.makedirs(stock.dir)
    for _ in range(2):
        made = str(tmp_path / "made")
        fakekeygen._make(["-t", "rsa", "-C", hostkeys.tag(""), "-f", made])
        stock.put("rsa", made)
    pre = hostkeys.Prefetch(sshdconfig.key_types(Guest(root)), STATIC.hostname, stock)
    try:
        ready = pre.ready()
        before = len(keygen.calls)
        identity(root, replace(STATIC, hostkeys=ready))
        assert len(keygen.calls) == before, "no ssh-keygen on the deploy's path"
    finally:
        pre.close()
    assert [c[3] for c in keygen.calls] == ["ecdsa", "ed25519"], "RSA from the stock; the fast ones made at once"
    for path, t in DEFAULTS:
        assert_key(root, path, t)


def test_fingerprints_are_those_of_the_keys_the_vm_has(tmp_path, keygen):
    root = getimage_tree(tmp_path, sshd="HostKey /srv/keys/site_ed25519\nHostKey /etc/ssh/ssh_host_rsa_key\n")
    write(root, "/etc/ssh/ssh_host_ecdsa_key", "golden")  # renewed, but not served: ssh-keyscan never sees it
    identity(root)
    assert_key(root, "/etc/ssh/ssh_host_ecdsa_key", "ecdsa")
    pubs = [read(root, p + ".pub") for p in ("/srv/keys/site_ed25519", "/etc/ssh/ssh_host_rsa_key")]
    assert sshdconfig.fingerprints(Guest(root)) == [keyfiles.fingerprint(p) for p in pubs]
    write(root, "/srv/keys/site_ed25519.pub", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBN/Sy+Js2zeH9VTrVxcTafjSnGKpM"
          f"LLgRRjdM+bmlOW {TAG}\n")  # a stale public half: sshd serves the private key's own
    assert sshdconfig.fingerprints(Guest(root))[0] == keyfiles.fingerprint(pubs[0])


@pytest.mark.parametrize("name", sorted(TREES))
def test_every_family_gets_its_hostname_files_though_getimage_dropped_etc_hostname(tmp_path, keygen, name):
    """Item 4 of issue 26, shown for each release (main's hostname fixup already did this)."""
    root = build(tmp_path / "guest", name)
    if os.path.lexists(os.path.join(root, "etc/hostname")):
        os.unlink(os.path.join(root, "etc/hostname"))
    identity(root)
    path, style = detect(Guest(root)).hostname_files[0]  # the file the family's boot reads the name from
    want = {"short": "vm1\n", "fqdn": "vm1.example.org\n"}.get(style, "HOSTNAME=vm1.example.org\n")
    assert want in read(root, path), path


def test_an_include_loop_is_fatal_not_endless(tmp_path, keygen):
    root = getimage_tree(tmp_path)
    write(root, "/etc/ssh/sshd_config.d/10-a.conf", "Include /etc/ssh/sshd_config.d/*.conf\n")
    with pytest.raises(Fatal, match=r"^/etc/ssh/sshd_config.d/10-a.conf line 1: Include nested more than 16 deep"):
        identity(root)
