"""cloud-init on real disks: the tiny image with a fake cloud-init laid in (its files only, never run)
deployed, the seed read back from the VM's disk; its instance-id kept by an update and a rebuild and
new for another VM; --cloud-init off; an image without cloud-init or with it disabled left alone;
a bad --user-data one FATAL with nothing made. VMs are named ci-*."""

from __future__ import annotations

import json
import os

import pytest

from .harness import debugfs_cat, host_state, make_env, record, tiny_image, write

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "512M", "--noswap", "--dhcp"]
SEED = "/var/lib/cloud/seed/nocloud"
CFG = "/etc/cloud/cloud.cfg.d/99_si-xen.cfg"
USER_DATA = "#cloud-config\nwrite_files:\n  - path: /root/ci-marker\n    content: made by cloud-init\n"


def doc(text: str | None) -> dict:
    """A seed file as the fixup writes it: a YAML mapping of ``key: JSON`` lines (comments out)."""
    assert text is not None
    return {k: json.loads(v) for k, _, v in (ln.partition(": ") for ln in text.splitlines())
            if k and not k.startswith("#")}


def setup(tmp_path, cloud_init: bool = True, **extra):
    images = tmp_path / "images"
    image = tiny_image(images)
    if cloud_init:  # what Debian's cloud-init package puts where si-xen looks (the program is never run)
        write(image, "/usr/bin/cloud-init", "#!/usr/bin/python3\nraise SystemExit('never run by si-xen')\n")
        write(image, "/usr/lib/python3/dist-packages/cloudinit/__init__.py", "")
        write(image, "/etc/cloud/cloud.cfg", "users: [default]\n")
        write(image, "/etc/cloud/cloud.cfg.d/90_dpkg.cfg", "datasource_list: [ NoCloud, ConfigDrive, None ]\n")
    for path, text in extra.items():
        write(image, path, text)
    env = make_env(tmp_path / "e", str(images))
    return env, image


def mk(env, name: str, *args: str, **kw):
    return env.mk("tiny", "--hostname", name, *OPTS, "--dir", env.dir, "--output", env.output, *args, **kw)


def disk(env, name: str) -> str:
    return f"{env.dir}/domains/{name}/disk.img"


def instance_id(env, name: str) -> str:
    return doc(debugfs_cat(disk(env, name), f"{SEED}/meta-data"))["instance-id"]


def test_the_seed_on_the_disk_and_its_instance_id_through_update_and_rebuild(tmp_path):
    before = host_state(str(tmp_path), ("ci-u1", "ci-u2"))
    env, image = setup(tmp_path)
    ud = tmp_path / "user-data"
    ud.write_text(USER_DATA)
    mk(env, "ci-u1", "--user-data", str(ud), check=True)
    d = disk(env, "ci-u1")
    meta = doc(debugfs_cat(d, f"{SEED}/meta-data"))
    assert meta["local-hostname"] == "ci-u1" and meta["instance-id"].startswith("si-xen-")
    assert doc(debugfs_cat(d, f"{SEED}/network-config")) == {"config": "disabled"}  # ifupdown is si-xen's
    assert debugfs_cat(d, f"{SEED}/user-data") == USER_DATA
    cfg = doc(debugfs_cat(d, CFG))
    assert cfg["datasource_list"] == ["NoCloud", "None"] and cfg["ssh_deletekeys"] is False
    assert f"{SEED}/meta-data" in record(env, "ci-u1")["owned"]["cloudinit"]  # what an update watches
    iid = meta["instance-id"]

    write(image, "/etc/cloud/cloud.cfg.d/95_site.cfg", "locale: C.UTF-8\n")  # watched: the fixup runs again
    up = env.run("updatexenvm", "ci-u1", check=True).stdout
    assert "cloudinit" in up, up
    assert debugfs_cat(d, "/etc/cloud/cloud.cfg.d/95_site.cfg") == "locale: C.UTF-8\n"
    assert instance_id(env, "ci-u1") == iid, "an update keeps the VM's instance-id"
    assert debugfs_cat(d, f"{SEED}/user-data") == USER_DATA

    env.mk("--rebuild", "ci-u1", check=True)
    assert instance_id(env, "ci-u1") == iid, "a rebuild carries it"
    assert debugfs_cat(disk(env, "ci-u1"), f"{SEED}/user-data") == USER_DATA  # the recorded --user-data again

    mk(env, "ci-u2", check=True)
    assert instance_id(env, "ci-u2") not in ("", iid), "another VM is another instance"
    assert debugfs_cat(disk(env, "ci-u2"), f"{SEED}/user-data") == ""
    for name in ("ci-u1", "ci-u2"):
        env.run("rmxenvm", name, "--yes", check=True)
    assert host_state(str(tmp_path), ("ci-u1", "ci-u2")) == before


def test_cloud_init_off_disables_it(tmp_path):
    env, _ = setup(tmp_path)
    mk(env, "ci-off", "--cloud-init", "off", check=True)
    d = disk(env, "ci-off")
    assert debugfs_cat(d, "/etc/cloud/cloud-init.disabled") is not None
    assert debugfs_cat(d, f"{SEED}/meta-data") is None and debugfs_cat(d, CFG) is None
    env.run("rmxenvm", "ci-off", "--yes", check=True)


def test_si_xens_own_off_switch_in_an_image_is_a_captured_vms_not_the_images(tmp_path):
    """An image captured from a VM made with --cloud-init off carries si-xen's cloud-init.disabled:
    a new VM's cloud-init runs (seeded), as for the image before; --cloud-init off keeps it off."""
    from si_xen.fixups.cloudinit import HEADER

    env, _ = setup(tmp_path, **{"/etc/cloud/cloud-init.disabled": HEADER})
    mk(env, "ci-cap", check=True)
    d = disk(env, "ci-cap")
    assert debugfs_cat(d, "/etc/cloud/cloud-init.disabled") is None and debugfs_cat(d, f"{SEED}/meta-data")
    mk(env, "ci-off2", "--cloud-init", "off", check=True)
    assert debugfs_cat(disk(env, "ci-off2"), "/etc/cloud/cloud-init.disabled") == HEADER
    for name in ("ci-cap", "ci-off2"):
        env.run("rmxenvm", name, "--yes", check=True)


@pytest.mark.parametrize("case", ["absent", "disabled"])
def test_an_image_without_cloud_init_or_with_it_disabled_is_left_alone(tmp_path, case):
    extra = {"/etc/cloud/cloud-init.disabled": ""} if case == "disabled" else {}
    env, _ = setup(tmp_path, cloud_init=case != "absent", **extra)
    name = f"ci-{case[:3]}"
    mk(env, name, check=True)
    d = disk(env, name)
    assert debugfs_cat(d, f"{SEED}/meta-data") is None and debugfs_cat(d, CFG) is None
    if case == "disabled":
        assert debugfs_cat(d, "/etc/cloud/cloud-init.disabled") == ""
    env.run("rmxenvm", name, "--yes", check=True)


@pytest.mark.parametrize("bad", ["missing", "#include http://example.org/x\n", "#cloud-config\n\tkey: v\n"])
def test_bad_user_data_is_one_fatal_and_nothing_is_made(tmp_path, bad):
    before = host_state(str(tmp_path), ("ci-bad",))
    env, _ = setup(tmp_path)
    ud = tmp_path / "user-data"
    if bad != "missing":
        ud.write_text(bad)
    cp = mk(env, "ci-bad", "--user-data", str(ud))
    fatals = [ln for ln in cp.stderr.splitlines() if ln.startswith("FATAL:")]
    assert cp.returncode != 0 and len(fatals) == 1 and "--user-data" in fatals[0], cp.stderr
    assert not os.path.exists(f"{env.dir}/domains/ci-bad") and not os.listdir(env.output)
    assert not os.path.exists(f"{env.state}/vms/ci-bad.journal")
    assert host_state(str(tmp_path), ("ci-bad",)) == before


def test_an_images_own_nocloud_seed_config_is_warned_of(tmp_path):
    """A golden client's cloud.cfg.d giving NoCloud a seedfrom (cloud-init takes it before the seed
    dir): one WARNING naming the file; a NoCloud section without a seed of its own says nothing."""
    lab = "datasource:\n  NoCloud:\n    seedfrom: http://lab.example/seed/\n"
    env, image = setup(tmp_path, **{"/etc/cloud/cloud.cfg.d/10_lab.cfg": lab})
    cp = mk(env, "ci-lab", check=True)
    warned = [x for x in cp.stderr.splitlines() if "10_lab.cfg" in x]
    assert len(warned) == 1 and "gives NoCloud a seed of its own" in warned[0], cp.stderr
    env.run("rmxenvm", "ci-lab", "--yes", check=True)
    write(image, "/etc/cloud/cloud.cfg.d/10_lab.cfg", "datasource:\n  NoCloud:\n    fs_label: cidata\n")
    cp = mk(env, "ci-lab", check=True)
    assert "10_lab.cfg" not in cp.stderr, cp.stderr
    env.run("rmxenvm", "ci-lab", "--yes", check=True)
