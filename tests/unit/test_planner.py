"""Plans from options + image, on a small fake image (no root, nothing touched)."""

import os

import pytest

from si_xen import config, planner
from si_xen.errors import Fatal
from si_xen.image import open_image
from si_xen.image.survey import survey

from . import fakeimage

LAYOUT = """<config>
  <fsinfo line="10" real_dev="/dev/sda1" mp="/" fs="ext4" options="errors=remount-ro" />
  <fsinfo line="20" real_dev="/dev/sda3" mp="/var" fs="reiserfs" options="defaults" />
  <fsinfo line="30" real_dev="/dev/sda2" mp="swap" fs="swap" options="defaults" />
  <fsinfo line="40" real_dev="/dev/sda4" mp="/boot/efi" fs="vfat" options="defaults" />
</config>"""


@pytest.fixture
def image(tmp_path):
    root = fakeimage.make(tmp_path / "images" / "deb", unpacked_mib=16)
    with open(os.path.join(root, "etc/systemimager/autoinstallscript.conf"), "w") as f:
        f.write(LAYOUT)
    return open_image(root)


def opts(tmp_path, **kw):
    o = dict(config.BUILTIN, hostname="vm1", dhcp=True, dir=str(tmp_path), output=str(tmp_path))
    o.update(kw)
    return o


def test_default_plan(tmp_path, image):
    p = planner.make_plan(opts(tmp_path), image, survey(image.path))
    assert [(d.vdev, d.mountpoint, d.size_mib) for d in p.disks] == [("xvda1", "", 256), ("xvda2", "/", 4096)]
    assert p.root.target == f"{tmp_path}/domains/vm1/disk.img"
    assert p.cfg_path == f"{tmp_path}/vm1.cfg" and p.net.mac.startswith("00:16:3e:")
    assert planner.check_boot(p, image).version == "6.1.0-99-amd64"


def test_image_layout_keeps_known_filesystems_and_warns(tmp_path, image):
    warnings = []
    p = planner.make_plan(opts(tmp_path, layout="image", size_given=False), image, survey(image.path),
                          warn=warnings.append)
    assert [(d.vdev, d.mountpoint, d.fs) for d in p.disks] == [
        ("xvda1", "", "swap"), ("xvda2", "/", "ext4"), ("xvda3", "/var", "ext4")]
    assert any("reiserfs" in w for w in warnings) and any("/boot/efi" in w for w in warnings)
    assert all(d.size_mib >= 256 for d in p.disks if d.mountpoint)


def test_memory_need_is_checked_against_the_guest(tmp_path, image):
    p = planner.make_plan(opts(tmp_path, memory="128M"), image, survey(image.path))
    with pytest.raises(Fatal, match=r"need \d+ MiB to boot"):
        planner.check_boot(p, image)


def test_size_too_small_names_the_need(tmp_path, image):
    big = os.path.join(image.path, "bin", "big")
    with open(big, "wb") as f:
        f.write(os.urandom(80 * 2**20))
    with pytest.raises(Fatal, match=r"--size of 64M is too small: image 'deb' needs \d+ MiB"):
        planner.make_plan(opts(tmp_path, size="64M"), image, survey(image.path))


def test_layout_image_without_metadata(tmp_path):
    img = open_image(fakeimage.make(tmp_path / "plain"))
    with pytest.raises(Fatal, match="has no disk layout"):
        planner.make_plan(opts(tmp_path, layout="image"), img, survey(img.path))


def test_boot_facts_are_cached_per_image_fingerprint(tmp_path, image, monkeypatch):
    p = planner.make_plan(opts(tmp_path), image, survey(image.path))
    first = planner.check_boot(p, image, str(tmp_path / "facts"))
    assert not (tmp_path / "facts").exists(), "nothing is kept before a VM is made"
    planner.remember_boot(p, first, str(tmp_path / "facts"))
    monkeypatch.setattr(planner.boot, "memory_needed", lambda *a: pytest.fail("measured again"))
    assert planner.check_boot(p, image, str(tmp_path / "facts")) == first
    with open(os.path.join(image.path, "etc/motd"), "w") as f:
        f.write("changed")
    p2 = planner.make_plan(opts(tmp_path), image, survey(image.path))
    assert p2.fingerprint != p.fingerprint
    with pytest.raises(BaseException, match="measured again"):
        planner.check_boot(p2, image, str(tmp_path / "facts"))


def test_no_kernel_needs_kernel_option(tmp_path, image):
    for n in os.listdir(os.path.join(image.path, "boot")):
        os.unlink(os.path.join(image.path, "boot", n))
    p = planner.make_plan(opts(tmp_path), image, survey(image.path))
    with pytest.raises(Fatal, match="no kernel in /boot.*--kernel"):
        planner.check_boot(p, image)


@pytest.mark.parametrize("opt", ["swap", "size", "memory"])
def test_negative_sizes_name_the_option(tmp_path, image, opt):
    # `--swap=-5M` gets past argparse (`--swap -5M` is a usage error): the plan names the option
    with pytest.raises(Fatal, match=rf"^invalid --{opt} '-5M' \("):
        planner.make_plan(opts(tmp_path, **{opt: "-5M"}), image, survey(image.path))


def test_last_walk_is_remembered_per_image_and_only_trusted_whole(tmp_path, image):
    from si_xen.image import survey as sv

    facts = str(tmp_path / "facts")
    assert sv.remembered(facts, image.path) is None and sv.remembered(None, image.path) is None
    s = survey(image.path)
    sv.remember(facts, image.path, s)
    assert sv.remembered(facts, image.path) == s
    assert sv.remembered(facts, image.path + "x") is None, "another image's walk is not this one's"
    with open(os.path.join(root := str(tmp_path / "images" / "deb"), "etc/motd"), "w") as f:
        f.write("changed\n")
    assert survey(root).fingerprint != s.fingerprint
    (walk,) = os.listdir(facts)
    with open(os.path.join(facts, walk), "r+b") as f:  # a torn or foreign file: no walk, not an error
        f.truncate(100)
    assert sv.remembered(facts, image.path) is None


def test_an_unproven_plan_never_builds_a_base(monkeypatch):
    from si_xen import bases, deploy

    built = []
    monkeypatch.setattr(bases, "ensure", lambda *a, build=True: built.append(build) or None)

    class Walk:
        def result(self):
            return "fresh survey"

    c = deploy.Context(None, None, None, None, None, None, confirm=Walk())
    with pytest.raises(deploy.ImageChanged, match="base disk was removed") as e:
        deploy._bases(c)
    assert built == [False] and e.value.survey == "fresh survey"


def test_confirm_keeps_a_vm_only_when_the_new_walk_agrees(tmp_path, image):
    from types import SimpleNamespace

    from si_xen import deploy

    s = survey(image.path)
    plan = SimpleNamespace(fingerprint=s.fingerprint)
    for fresh, kept in ((s, True), (SimpleNamespace(fingerprint="0" * 16), False), (None, False)):
        c = deploy.Context(plan, None, None, None, None, None, confirm=SimpleNamespace(result=lambda f=fresh: f))
        if kept:
            deploy._confirm(c)
        else:
            with pytest.raises(deploy.ImageChanged, match="image changed since its last walk"):
                deploy._confirm(c)
