"""Local overrides (SystemImager's DEFAULT_OVERRIDE_DIR/NAME) laid over a local image as a view
in si-xen's cache: real rsync on small trees (and a real deploy at the end)."""

from __future__ import annotations

import os

import pytest

from si_xen.errors import Fatal
from si_xen.image import views

pytestmark = pytest.mark.integration



def tree(root, files: dict[str, str]) -> str:
    for rel, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
        with open(os.path.join(root, rel), "w") as f:
            f.write(text)
    return str(root)


def read(root, rel) -> str:
    with open(os.path.join(root, rel)) as f:
        return f.read()


@pytest.fixture
def local(tmp_path):
    image = tree(tmp_path / "images/img", {"etc/motd": "golden\n", "etc/hostname": "golden\n", "usr/bin/x": "x"})
    tree(tmp_path / "overrides/web", {"etc/motd": "web\n", "etc/web.conf": "w\n"})
    tree(tmp_path / "overrides/site", {"etc/motd": "site\n"})
    return views.Local(str(tmp_path / "cache"), str(tmp_path / "lock"), "img", image, str(tmp_path / "overrides"))


def test_overrides_apply_in_order_and_never_touch_the_image(local):
    view, done = local.view(["web", "site"])
    assert read(view, "etc/motd") == "site\n", "later wins"
    assert read(view, "etc/web.conf") == "w\n" and done == [2, 1]
    assert read(local.path, "etc/motd") == "golden\n" and not os.path.exists(f"{local.path}/etc/web.conf")
    # unchanged files are the image's own inodes (no copy); overridden ones are new inodes
    assert os.path.samefile(f"{view}/usr/bin/x", f"{local.path}/usr/bin/x")
    assert not os.path.samefile(f"{view}/etc/motd", f"{local.path}/etc/motd")
    assert view.startswith(os.path.join(local.dir, "view-"))


def test_a_view_is_reused_until_the_image_or_an_override_changes(local):
    first, _ = local.view(["web"])
    again, done = local.view(["web"])
    assert again == first and done == []
    tree(local.overrides_dir + "/web", {"etc/new": "n\n"})
    second, done = local.view(["web"])
    assert second != first and read(second, "etc/new") == "n\n" and done == [3]
    tree(local.path, {"etc/added-by-si_getimage": "a\n"})
    third, _ = local.view(["web"])
    assert third not in (first, second) and read(third, "etc/added-by-si_getimage") == "a\n"
    kept = sorted(n for n in os.listdir(local.dir) if n.startswith("view-"))
    assert len(kept) == views.KEEP and os.path.basename(third) in kept and os.path.basename(first) not in kept


def test_a_killed_builds_staging_is_removed_by_the_next(local):
    os.makedirs(os.path.join(local.dir, ".staging-view-0123", "etc"))
    local.view(["web"])
    assert not [n for n in os.listdir(local.dir) if n.startswith(".staging")]


@pytest.mark.parametrize("name", ["nosuch", "../web", "-x"])
def test_an_unknown_override_names_the_dir(local, name):
    with pytest.raises(Fatal, match=rf"override '{name}' not found in .*/overrides") as e:
        local.view(["web", name], "/etc/systemimager/systemimager.conf")
    assert "DEFAULT_OVERRIDE_DIR" in e.value.fix
    assert not os.path.exists(local.dir), "nothing is made before every override is found"


def test_mkxenvm_override_without_a_server_reads_the_local_override_dir(local, tmp_path, monkeypatch):
    from si_xen.cli import mkxenvm

    sis = tree(tmp_path / "sis", {"systemimager.conf": f"DEFAULT_IMAGE_DIR = {tmp_path}/images\n"
                                  f"DEFAULT_OVERRIDE_DIR = {tmp_path}/overrides\n"})
    monkeypatch.setenv("SIS_CONFDIR", sis)
    (tmp_path / "x.conf").write_text(f"[paths]\ncache_dir = {tmp_path}/cache\nlock_dir = {tmp_path}/lock\n")
    argv = ["img", "--hostname", "h", "--dry-run", "--config", str(tmp_path / "x.conf")]
    with pytest.raises(Fatal, match=rf"override 'nosuch' not found in {tmp_path}/overrides") as e:
        mkxenvm.body([*argv, "--override", "nosuch"])
    assert f"from {sis}/systemimager.conf" in e.value.fix
    image = mkxenvm._image(mkxenvm.build_parser().parse_args([*argv, "--override", "web"]), "img")
    assert image.name == "img" and read(image.path, "etc/motd") == "web\n" and image.path.startswith(local.dir)


def test_deploy_of_the_test_image_with_a_local_override(debian12_image, xfs_dir, tmp_path):
    """A real deploy: the override is in the VM's disk, the image is not changed, the view is
    hard links (on the image's filesystem) and a second VM reuses it."""
    from .harness import debugfs_cat, host_state, make_env

    env = make_env(tmp_path / "e", os.path.dirname(debian12_image))
    tree(tmp_path / "overrides/web", {"etc/motd": "from local override web\n"})
    with open(f"{env.confdir}/systemimager.conf", "a") as f:
        f.write(f"DEFAULT_OVERRIDE_DIR = {tmp_path}/overrides\n")
    with open(env.config, "a") as f:
        f.write(f"cache_dir = {tmp_path}/cache\n")
    before = host_state(str(tmp_path), ("o1", "o2"))
    argv = [os.path.basename(debian12_image), "--override", "web", "--memory", "512M", "--size", "2G",
            "--swap", "128M", "--dhcp", "--dir", xfs_dir, "--output", env.output]
    first = env.mk(*argv, "--hostname", "o1", check=True)
    assert "Override 'web'" in first.stdout and "1 files copied" in first.stdout, first.stdout
    assert debugfs_cat(f"{xfs_dir}/domains/o1/disk.img", "/etc/motd") == "from local override web\n"
    with open(f"{debian12_image}/etc/motd") as f:
        assert "override" not in f.read(), "an override must not change the image"
    [view] = [os.path.join(d, v) for d, dirs, _ in os.walk(f"{tmp_path}/cache") for v in dirs if v.startswith("view-")]
    if os.stat(view).st_dev == os.stat(debian12_image).st_dev:
        assert os.path.samefile(f"{view}/etc/hostname", f"{debian12_image}/etc/hostname")
    second = env.mk(*argv, "--hostname", "o2", check=True)
    assert "Override 'web'" not in second.stdout, "an unchanged image and override reuse their view"
    assert debugfs_cat(f"{xfs_dir}/domains/o2/disk.img", "/etc/motd") == "from local override web\n"
    for h in ("o1", "o2"):
        env.run("rmxenvm", "--yes", h, check=True)
    assert host_state(str(tmp_path), ("o1", "o2")) == before
