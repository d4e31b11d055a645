"""The cloudinit fixup on fake guest trees: a NoCloud seed where the guest has cloud-init, nothing
where it has none or disables it, --cloud-init off, a stable instance-id, user-data checked."""

import importlib.util
import json
import os
import sys
from dataclasses import replace

import pytest

from si_xen import userdata
from si_xen.errors import Fatal
from si_xen.fixups import run_all
from si_xen.request import Request
from tests.unit.fixups.conftest import DHCP, STATIC
from tests.unit.fixups.trees import TREES, build, snapshot, write

SEED = "var/lib/cloud/seed/nocloud"
HAVE_YAML = importlib.util.find_spec("yaml") is not None
CFG = "etc/cloud/cloud.cfg.d/99_si-xen.cfg"
CLOUD_INIT = {"usr/bin/cloud-init": "#!/usr/bin/python3\n", "etc/cloud/cloud.cfg": "users: [default]\n",
              "usr/lib/python3/dist-packages/cloudinit/__init__.py": ""}
GOLDEN_RUN = {"var/lib/cloud/instances/golden-iid/sem/config_ssh": "",
              "var/lib/cloud/data/instance-id": "golden-iid\n", "var/lib/cloud/scripts/per-boot/site.sh": "#!/bin/sh\n"}


def _doc(root, gpath) -> dict:
    """A file the fixup wrote, parsed back: comment lines out, each ``key: value`` a JSON value
    (what YAML reads too)."""
    with open(os.path.join(root, gpath)) as f:
        out = {}
        for line in f:
            if line.strip() and not line.startswith("#"):
                k, _, v = line.partition(": ")
                out[k] = json.loads(v)
        return out


def test_what_it_writes_is_yaml_where_pyyaml_is(tmp_path):
    yaml = pytest.importorskip("yaml")
    root = _guest(tmp_path, "unknown")
    _run(root, STATIC)
    for p in (f"{SEED}/meta-data", f"{SEED}/network-config", CFG):
        with open(os.path.join(root, p)) as f:
            assert yaml.safe_load(f) == _doc(root, p)


def test_cloud_init_makes_no_host_key_beside_the_kinds_the_vm_has(tmp_path):
    """ssh_genkeytypes names the kinds of host key the guest has, never an empty list: cloud-init's
    schema refuses that (minItems 1), and says "Invalid cloud-config provided" at every boot."""
    root = _guest(tmp_path)
    for name in os.listdir(os.path.join(root, "etc/ssh")):
        if name.startswith("ssh_host_"):
            os.remove(os.path.join(root, "etc/ssh", name))
    _run(root, STATIC)
    assert "ssh_genkeytypes" not in _doc(root, CFG)  # none: cloud-init's own default, not []
    write(root, {f"etc/ssh/ssh_host_{k}_key{e}": "k\n" for k in ("ed25519", "rsa") for e in ("", ".pub")})
    _run(root, STATIC)
    assert _doc(root, CFG)["ssh_genkeytypes"] == ["ed25519", "rsa"]


def _key_kinds(root) -> list[str]:
    d = os.path.join(root, "etc/ssh")
    return sorted(n[9:-4] for n in os.listdir(d) if n.startswith("ssh_host_") and n.endswith("_key") and len(n) > 12) \
        if os.path.isdir(d) else []


def _guest(tmp_path, name="debian12", extra=None, sub="vm"):
    root = build(tmp_path / sub, name)
    write(root, {**CLOUD_INIT, **(extra or {})})
    return root


def _run(root, spec):
    lines = []
    run_all(root, spec, only=["cloudinit"], log=lines.append)
    return lines


def test_a_guest_without_cloud_init_is_untouched_and_said_so(tmp_path):
    root = build(tmp_path / "vm", "debian12")
    before = snapshot(root)
    lines = _run(root, STATIC)
    assert snapshot(root) == before
    assert any("not present" in ln for ln in lines)


@pytest.mark.parametrize("how", [{"etc/cloud/cloud-init.disabled": ""},
                                 {"etc/systemd/system/cloud-init.target": "MASK"}])
def test_a_guest_whose_cloud_init_is_disabled_is_untouched(tmp_path, how):
    root = _guest(tmp_path, extra={k: v for k, v in how.items() if v != "MASK"})
    for k, v in how.items():
        if v == "MASK":
            os.symlink("/dev/null", os.path.join(root, k))
    before = snapshot(root)
    lines = _run(root, STATIC)
    assert snapshot(root) == before
    assert any("disabled" in ln for ln in lines)


@pytest.mark.parametrize("name", sorted(TREES))
def test_the_seed_parses_back_and_says_what_the_vm_is(tmp_path, name):
    root = _guest(tmp_path, name)
    _run(root, STATIC)
    meta = _doc(root, f"{SEED}/meta-data")
    assert meta["local-hostname"] == "vm1.example.org"
    assert meta["instance-id"].startswith("si-xen-")
    cfg = _doc(root, CFG)
    assert cfg["datasource_list"] == ["NoCloud", "None"]
    assert cfg["ssh_deletekeys"] is False and cfg.get("ssh_genkeytypes", ["-"]) == (_key_kinds(root) or ["-"])
    assert cfg["preserve_hostname"] is True and cfg["manage_etc_hosts"] is False
    assert os.path.getsize(os.path.join(root, SEED, "user-data")) == 0  # NoCloud needs the file
    net = _doc(root, f"{SEED}/network-config")
    if name == "unknown":  # no stack si-xen renders: cloud-init gets the VM's addressing
        eth = net["ethernets"]["eth0"]
        assert net["version"] == 2 and eth["addresses"] == ["192.168.50.10/24"]
        assert eth["match"] == {"macaddress": "00:16:3e:01:02:03"}
        assert eth["routes"] == [{"to": "0.0.0.0/0", "via": "192.168.50.1"}]
        assert eth["nameservers"]["search"] == ["example.org"]
        assert "network" not in cfg
    else:  # si-xen's own config for the stack stands alone
        assert net == {"config": "disabled"} and cfg["network"] == {"config": "disabled"}


def test_the_config_sorts_after_debians_dpkg_config(tmp_path):
    """cloud-init merges cloud.cfg.d in sorted order, the last file winning; ds-identify takes the
    last datasource_list it greps: Debian's debconf writes 90_dpkg.cfg."""
    root = _guest(tmp_path, extra={"etc/cloud/cloud.cfg.d/90_dpkg.cfg": "datasource_list: [ NoCloud, Ec2 ]\n"})
    _run(root, STATIC)
    assert sorted(os.listdir(os.path.join(root, "etc/cloud/cloud.cfg.d")))[-1] == os.path.basename(CFG)


def test_dhcp_v2_config_where_cloud_init_renders(tmp_path):
    root = _guest(tmp_path, "unknown")
    _run(root, DHCP)
    eth = _doc(root, f"{SEED}/network-config")["ethernets"]["eth0"]
    assert eth["dhcp4"] is True and "addresses" not in eth


def test_a_new_vm_gets_a_new_instance_id_and_loses_the_golden_clients_run(tmp_path):
    image = _guest(tmp_path, extra=GOLDEN_RUN, sub="image")
    a, b = _guest(tmp_path, extra=GOLDEN_RUN, sub="a"), _guest(tmp_path, extra=GOLDEN_RUN, sub="b")
    os.symlink("/var/lib/cloud/instances/golden-iid", os.path.join(a, "var/lib/cloud/instance"))
    spec = replace(STATIC, image_source=image)
    _run(a, spec)
    _run(b, spec)
    ids = {_doc(r, f"{SEED}/meta-data")["instance-id"] for r in (a, b)}
    assert len(ids) == 2
    for gone in ("instance", "instances", "data"):
        assert not os.path.lexists(os.path.join(a, "var/lib/cloud", gone))
    assert os.path.isfile(os.path.join(a, "var/lib/cloud/scripts/per-boot/site.sh"))  # the image's, not a run's


def test_a_second_run_changes_nothing(tmp_path):
    image = _guest(tmp_path, sub="image")
    root = _guest(tmp_path)
    spec = replace(STATIC, image_source=image)
    _run(root, spec)
    before = snapshot(root)
    _run(root, spec)
    assert snapshot(root) == before


def test_an_image_carrying_a_vms_seed_gives_no_vm_its_id(tmp_path):
    """A golden image captured with a VM's seed in it: a new VM's id is its own, not that VM's."""
    old = _guest(tmp_path, sub="old")
    _run(old, STATIC)
    iid = _doc(old, f"{SEED}/meta-data")["instance-id"]
    image = old  # the image is the old VM's tree
    root = _guest(tmp_path, extra={f"{SEED}/meta-data": f"instance-id: {iid}\n", f"{SEED}/vendor-data": "x\n"})
    _run(root, replace(STATIC, image_source=image))
    assert _doc(root, f"{SEED}/meta-data")["instance-id"] != iid
    assert not os.path.exists(os.path.join(root, SEED, "vendor-data"))


def test_an_update_keeps_the_instance_id_the_user_data_and_the_run(tmp_path):
    root = _guest(tmp_path, extra=GOLDEN_RUN)
    _run(root, replace(STATIC, user_data="#cloud-config\nruncmd: [touch /x]\n"))
    iid = _doc(root, f"{SEED}/meta-data")["instance-id"]
    write(root, GOLDEN_RUN)  # the VM's own run of cloud-init since
    _run(root, replace(STATIC, keep_identity=True, image_source=str(tmp_path / "new-image")))
    assert _doc(root, f"{SEED}/meta-data")["instance-id"] == iid
    with open(os.path.join(root, SEED, "user-data")) as f:
        assert "runcmd" in f.read()
    assert os.path.isdir(os.path.join(root, "var/lib/cloud/instances/golden-iid"))


def test_a_rebuild_takes_the_carried_instance_id(tmp_path):
    old = _guest(tmp_path, sub="old")
    _run(old, STATIC)
    iid = _doc(old, f"{SEED}/meta-data")["instance-id"]
    carried = tmp_path / "carry"
    write(carried, {f"{SEED}/meta-data": open(os.path.join(old, SEED, "meta-data")).read()})
    image = _guest(tmp_path, sub="image")
    new = _guest(tmp_path, sub="new")
    _run(new, replace(STATIC, image_source=image, identity_dir=str(carried)))
    assert _doc(new, f"{SEED}/meta-data")["instance-id"] == iid


def test_a_vm_made_before_the_seed_gets_one_id_from_its_update_or_its_rebuild(tmp_path):
    """A VM whose guest has cloud-init but no seed of ours (made before this fixup): its first update
    and a rebuild (nothing to carry) give it the same instance-id, from its name and MAC, every time;
    another VM's differs; a carried id still wins."""
    image = _guest(tmp_path, sub="image")

    def update(sub, spec=STATIC):
        root = _guest(tmp_path, extra=GOLDEN_RUN, sub=sub)
        _run(root, replace(spec, keep_identity=True, image_source=image))
        return _doc(root, f"{SEED}/meta-data")["instance-id"]

    def rebuild(sub, spec=STATIC, carried=None):
        d = tmp_path / f"carry-{sub}"
        write(d, carried or {"etc/machine-id": "0123\n"})  # the old VM's identity, no meta-data in it
        root = _guest(tmp_path, sub=sub)
        _run(root, replace(spec, image_source=image, identity_dir=str(d)))
        return _doc(root, f"{SEED}/meta-data")["instance-id"]

    iid = update("u1")
    assert iid.startswith("si-xen-") and iid == update("u2") == rebuild("r1") == rebuild("r2")
    other_mac = replace(STATIC, net=replace(STATIC.net, mac="00:16:3e:0a:0b:0c"))
    assert len({iid, update("u3", other_mac), update("u4", replace(STATIC, hostname="vm9.example.org"))}) == 3
    assert rebuild("r3", carried={f"{SEED}/meta-data": "instance-id: iid-kept\n"}) == "iid-kept"


def test_the_carry_keeps_the_seeds_meta_data(tmp_path):
    from si_xen import carry
    from si_xen.guestfs import Guest

    root = _guest(tmp_path)
    _run(root, STATIC)
    assert f"{SEED}/meta-data" in carry.identity_paths(Guest(root))


def test_cloud_init_off_writes_the_off_switch_only(tmp_path):
    root = _guest(tmp_path)
    _run(root, replace(STATIC, cloud_init="off"))
    assert os.path.isfile(os.path.join(root, "etc/cloud/cloud-init.disabled"))
    assert not os.path.exists(os.path.join(root, "var/lib/cloud"))
    assert not os.path.exists(os.path.join(root, CFG))


def test_cloud_init_off_leaves_a_guest_without_it_alone(tmp_path):
    root = build(tmp_path / "vm", "debian12")
    before = snapshot(root)
    _run(root, replace(STATIC, cloud_init="off"))
    assert snapshot(root) == before


def test_user_data_is_written_as_given(tmp_path):
    root = _guest(tmp_path)
    doc = "#cloud-config\nwrite_files:\n  - path: /marker\n    content: hi\n"
    _run(root, replace(STATIC, user_data=doc))
    p = os.path.join(root, SEED, "user-data")
    assert open(p).read() == doc and os.stat(p).st_mode & 0o077 == 0  # it may hold secrets


@pytest.mark.parametrize("where", ["var/lib/cloud", "var/lib/cloud/seed", SEED])
def test_a_link_on_the_seeds_way_out_of_the_guest_is_not_followed(tmp_path, where):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = _guest(tmp_path)
    os.makedirs(os.path.dirname(os.path.join(root, where)), exist_ok=True)
    os.symlink(str(outside), os.path.join(root, where))
    lines = _run(root, STATIC)
    assert list(outside.iterdir()) == []
    assert not os.path.exists(os.path.join(root, str(outside).lstrip("/")))  # nor followed inside
    assert any(ln.startswith("WARNING: ") and "symbolic link" in ln for ln in lines)


def test_a_seed_file_that_is_a_link_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("dom0\n")
    root = _guest(tmp_path)
    os.makedirs(os.path.join(root, SEED))
    os.symlink(str(victim), os.path.join(root, SEED, "meta-data"))
    os.symlink(str(tmp_path / "gone"), os.path.join(root, "var/lib/cloud/instance"))
    _run(root, STATIC)
    assert victim.read_text() == "dom0\n"
    assert not os.path.islink(os.path.join(root, SEED, "meta-data"))


# --user-data: checked when the request is made, before anything is


def _request(tmp_path, **o):
    return Request.from_options({"hostname": "ci-u1", "dir": str(tmp_path), "output": str(tmp_path), **o})


@pytest.mark.parametrize("text", ["#cloud-config\npackages: [curl]\n", "#!/bin/sh\ntouch /marker\n",
                                  "#cloud-config\n"])
def test_user_data_accepted(tmp_path, text):
    f = tmp_path / "ud"
    f.write_text(text)
    req = _request(tmp_path, user_data=str(f))
    assert req.user_data_text == text and req.user_data == str(f)
    assert "user_data_text" not in req.to_json() and req.to_json()["user_data"] == str(f)


@pytest.mark.parametrize("text, says", [
    ("packages: [curl]\n", "neither '#cloud-config' nor '#!'"),
    ("#include http://x/y\n", "neither"),
    ("#cloud-config\n\tpackages: [curl]\n", "not valid YAML" if HAVE_YAML else "tab"),
    (b"#cloud-config\n\xff\xfe\n", "not UTF-8"),
])
def test_bad_user_data_is_one_fatal(tmp_path, text, says):
    f = tmp_path / "ud"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(Fatal) as e:
        _request(tmp_path, user_data=str(f))
    assert says in e.value.problem and "--user-data" in e.value.problem


def test_user_data_not_a_mapping_is_refused_where_pyyaml_is(tmp_path):
    pytest.importorskip("yaml")
    for text, says in (("#cloud-config\n- a\n- b\n", "not a mapping"), ("#cloud-config\na: [b\n", "not valid YAML")):
        f = tmp_path / "ud"
        f.write_text(text)
        with pytest.raises(Fatal) as e:
            _request(tmp_path, user_data=str(f))
        assert says in e.value.problem


def test_without_pyyaml_the_form_is_checked(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    userdata.check_user_data("#cloud-config\na: [b\n", "x")  # not YAML, but passes the form check
    with pytest.raises(Fatal):
        userdata.check_user_data("#cloud-config\n  \tb: 1\n", "x")
    for not_a_mapping in ("#cloud-config\n- a\n- b\n", "#cloud-config\n# c\n\njust words\n", "#cloud-config\n[a, b]\n"):
        with pytest.raises(Fatal, match="does not begin a mapping"):
            userdata.check_user_data(not_a_mapping, "x")
    for mapping in ("#cloud-config\n", "#cloud-config\n# only a comment\n", "#cloud-config\nruncmd:\n  - [ls]\n",
                    "#cloud-config\n\n'quoted key': 1\n", "#cloud-config\nhostname: a:b\n"):
        userdata.check_user_data(mapping, "x")


@pytest.mark.parametrize("path", ["missing", "dir"])
def test_missing_or_unreadable_user_data_is_one_fatal(tmp_path, path):
    (tmp_path / "dir").mkdir()
    with pytest.raises(Fatal) as e:
        _request(tmp_path, user_data=str(tmp_path / path))
    assert "cannot read --user-data" in e.value.problem


def test_cloud_init_mode_is_checked(tmp_path):
    assert _request(tmp_path).cloud_init == "auto"
    assert _request(tmp_path, cloud_init="off").cloud_init == "off"
    with pytest.raises(Fatal) as e:
        _request(tmp_path, cloud_init="maybe")
    assert "--cloud-init" in e.value.problem


def test_a_recorded_request_keeps_both(tmp_path):
    f = tmp_path / "ud"
    f.write_text("#!/bin/sh\n")
    req = _request(tmp_path, cloud_init="off", user_data=str(f))
    again = Request.from_json(req.to_json())
    assert (again.cloud_init, again.user_data, again.user_data_text) == ("off", str(f), "#!/bin/sh\n")


def test_a_capture_strips_si_xens_seed_and_keeps_a_foreign_one(tmp_path):
    from si_xen.capture.identity import strip_identity

    ours = _guest(tmp_path, extra=GOLDEN_RUN)
    _run(ours, STATIC)
    removed = strip_identity(ours)
    assert not os.listdir(os.path.join(ours, SEED)) and f"removed /{SEED}/meta-data" in removed
    assert os.listdir(os.path.join(ours, "var/lib/cloud")) == ["seed"]
    foreign = _guest(tmp_path, extra={f"{SEED}/meta-data": "instance-id: site\n", f"{SEED}/user-data": ""}, sub="f")
    strip_identity(foreign)
    assert sorted(os.listdir(os.path.join(foreign, SEED))) == ["meta-data", "user-data"]


@pytest.mark.parametrize("text", ["instance-id: iid-1\nlocal-hostname: a\n", '{"instance-id": "iid-1", "x": 1}\n',
                                  "# instance-id: not-this\ninstance-id: 'iid-1'\n", 'instance-id: "iid-1"\n'])
def test_the_instance_id_is_read_from_yaml_or_json(text):
    from si_xen.fixups.cloudinit import instance_id

    assert instance_id(text) == "iid-1"


def test_a_system_network_config_that_would_outrank_the_seeds_v2_is_warned_of(tmp_path):
    curtin = "etc/cloud/cloud.cfg.d/50-curtin-networking.cfg"
    root = _guest(tmp_path, "unknown", extra={curtin: "network: {version: 2, ethernets: {ens3: {dhcp4: true}}}\n"})
    lines = _run(root, STATIC)
    assert [ln for ln in lines if ln.startswith("WARNING: ") and curtin in ln]
    quiet = _run(_guest(tmp_path, "unknown", sub="plain"), STATIC)
    assert not [ln for ln in quiet if ln.startswith("WARNING: cloudinit")]


@pytest.mark.parametrize("text, want", [
    ('public-keys: ["x instance-id: evil"]\ninstance-id: real\n', "real"),  # a value holding the words
    ("local-instance-id: x\n", ""), ('instance-id: "a b"\n', "a b"), ('{"instance-id": "j1"}', "j1"),
    ("instance-id: si-xen-1234 # c\nlocal-hostname: h\n", "si-xen-1234"), ("", "")])
def test_instance_id_is_the_top_level_key_only(text, want):
    from si_xen.fixups.cloudinit import instance_id

    assert instance_id(text) == want
