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


OS_RELEASE = "ID=debian\nVERSION_ID=12\n"  # an image nothing identifies is refused


@pytest.fixture
def local(tmp_path):
    image = tree(tmp_path / "images/img", {"etc/motd": "golden\n", "etc/hostname": "golden\n", "usr/bin/x": "x",
                                           "etc/os-release": OS_RELEASE})
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
    image, said = mkxenvm._image(mkxenvm.build_parser().parse_args([*argv, "--override", "web"]), "img")
    assert said["overrides"] == ["web"], "the record keeps the source as named"
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
    assert "already in the cached view" in second.stdout and "files copied" not in second.stdout, \
        "an unchanged image and override reuse their view"
    assert debugfs_cat(f"{xfs_dir}/domains/o2/disk.img", "/etc/motd") == "from local override web\n"
    for h in ("o1", "o2"):
        env.run("rmxenvm", "--yes", h, check=True)
    assert host_state(str(tmp_path), ("o1", "o2")) == before


IMAGE_LAYOUT = """<config>
  <fsinfo line="10" real_dev="/dev/sda1" mp="/" fs="ext4" options="defaults" />
  <fsinfo line="20" real_dev="/dev/sda2" mp="/var" fs="ext4" options="defaults" />
</config>
"""
SCRIPTS_LAYOUT = """<config>
  <fsinfo line="10" real_dev="/dev/vda1" mp="/" fs="xfs" options="defaults" />
  <fsinfo line="20" real_dev="/dev/vda2" mp="/srv" fs="ext4" options="nodev" />
</config>
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local store as an image server host has it: image 'img' (with its own layout), the
    overrides img (named like the image), grp (cluster.txt's group), h1 (named like the host),
    last, and an empty one named like another host; the scripts dir's cluster.txt and
    disks-layouts/img.xml. Each override writes etc/motd; the files upto-* are written by all
    before the one they name."""
    tree(tmp_path / "images/img", {"etc/motd": "golden\n", "usr/bin/x": "x", "etc/os-release": OS_RELEASE,
                                   "etc/systemimager/autoinstallscript.conf": IMAGE_LAYOUT})
    for name, upto in (("img", ("group", "host")), ("grp", ("group", "host")), ("h1", ("host",)), ("last", ())):
        tree(tmp_path / "overrides" / name, {"etc/motd": name + "\n", **{f"etc/upto-{u}": name + "\n" for u in upto}})
    os.makedirs(tmp_path / "overrides/h2")
    tree(tmp_path / "scripts", {"cluster.txt": "# global_override=:ghost:\nh1:web:img:grp\n",
                                "disks-layouts/img.xml": SCRIPTS_LAYOUT})
    sis = tree(tmp_path / "sis", {"systemimager.conf": f"DEFAULT_IMAGE_DIR = {tmp_path}/images\n"
                                  f"DEFAULT_OVERRIDE_DIR = {tmp_path}/overrides\n"
                                  f"AUTOINSTALL_SCRIPT_DIR = {tmp_path}/scripts\n"})
    monkeypatch.setenv("SIS_CONFDIR", sis)
    (tmp_path / "x.conf").write_text(f"[paths]\ncache_dir = {tmp_path}/cache\nlock_dir = {tmp_path}/lock\n")
    return tmp_path


def image_of(store, *args):
    from si_xen.cli import mkxenvm

    argv = ["img", "--dry-run", "--config", str(store / "x.conf"), *args]
    return mkxenvm._image(mkxenvm.build_parser().parse_args(argv), "img")[0]


def test_local_overrides_in_systemimagers_order(store, capsys):
    """IMAGE, the group override of the scripts dir's cluster.txt, HOSTNAME (short name),
    then --override: all four laid in order, the summary lines in order and where from."""
    image = image_of(store, "--hostname", "h1.example.org", "--override", "last")
    got = {f: read(image.path, f"etc/{f}") for f in ("motd", "upto-group", "upto-host")}
    assert got == {"motd": "last\n", "upto-group": "grp\n", "upto-host": "h1\n"}
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Override '")]
    o = store / "overrides"
    assert lines == [
        f"Override 'ghost' (cluster.txt) not found in {o}: skipped, as SystemImager does",
        f"Override 'img' (named like the image, 1 of 4) from {o}/img: 3 files copied over image 'img'",
        f"Override 'grp' (cluster.txt, 2 of 4) from {o}/grp: 3 files copied over image 'img'",
        f"Override 'h1' (named like the host, 3 of 4) from {o}/h1: 2 files copied over image 'img'",
        f"Override 'last' (--override, 4 of 4) from {o}/last: 1 files copied over image 'img'",
    ]
    assert read(store / "images/img", "etc/motd") == "golden\n", "the image is never written"


def test_an_override_named_twice_is_laid_once_at_its_last_place(store, capsys):
    image = image_of(store, "--hostname", "h1", "--override", "img", "--override", "img")
    # at its first place h1 would be laid over it: upto-host would be "h1"
    assert read(image.path, "etc/motd") == "img\n" and read(image.path, "etc/upto-host") == "img\n"
    lines = [line.split(" from ")[0] for line in capsys.readouterr().out.splitlines() if " of 3)" in line]
    assert lines == ["Override 'grp' (cluster.txt, 1 of 3)", "Override 'h1' (named like the host, 2 of 3)",
                     "Override 'img' (--override, 3 of 3)"]


def test_an_empty_or_absent_implicit_override_is_not_laid(store, capsys):
    """h2's override dir is empty (as si_mkautoinstallscript makes IMAGE's) and h3 has none:
    only the image's override is laid; a named one that is not there is still a FATAL."""
    image = image_of(store, "--hostname", "h2")
    assert read(image.path, "etc/motd") == "img\n"
    assert [ln for ln in capsys.readouterr().out.splitlines() if " of " in ln][0].startswith(
        "Override 'img' (named like the image, 1 of 1)")
    with pytest.raises(Fatal, match=f"override 'nosuch' not found in {store}/overrides"):
        image_of(store, "--hostname", "h3", "--override", "nosuch")


def test_the_scripts_dirs_disks_layout_wins_over_the_images_own(store):
    image = image_of(store, "--hostname", "h3")
    assert [(e.mountpoint, e.fs) for e in image.meta.filesystems] == [("/", "xfs"), ("/srv", "ext4")]
    assert image.layout_from == f"{store}/scripts/disks-layouts/img.xml"
    os.unlink(store / "scripts/disks-layouts/img.xml")
    image = image_of(store, "--hostname", "h3")
    assert [e.mountpoint for e in image.meta.filesystems] == ["/", "/var"]
    assert image.layout_from == "/etc/systemimager/autoinstallscript.conf (the image's own)"


def test_a_batch_with_a_host_override_or_different_groups_is_refused(store):
    """A batch shares one image: h4's own override cannot be laid for h4 alone, nor h1's
    cluster.txt group for h1 alone; a batch without either gets the image's override."""
    tree(store / "overrides/h4", {"etc/motd": "h4\n"})
    with pytest.raises(Fatal, match=rf"override 'h4' \(named like the host\) is there in {store}/overrides, but a batch"):
        image_of(store, "--hostname", "h3,h4")
    with pytest.raises(Fatal, match="cluster.txt gives the hosts of 'h0,h1' different images or overrides"):
        image_of(store, "--hostname", "h0,h1")
    image = image_of(store, "--hostname", "h[2-3]")  # h2's is empty, h3 has none, neither is in cluster.txt
    assert read(image.path, "etc/motd") == "img\n"
