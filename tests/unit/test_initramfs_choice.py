"""Which initramfs a VM boots (--initramfs auto|slim|image) and the memory check made with it:
a MODULES=most-like initramfs gets a Xen-sized one made from it (direct boot: the VM's
initrd.img; pygrub/pvgrub2: NAME.xen in the guest, booted by grub.cfg's first entry), one
that has nothing to leave out boots as it is, and `slim` that cannot be is one FATAL."""

from __future__ import annotations

import gzip
import os
import random

import pytest

from si_xen import boot, config, initramfs, initramfs_slim, planner
from si_xen.errors import Fatal
from si_xen.guestfs import Guest, RecordingGuest
from si_xen.image import open_image
from si_xen.image.survey import survey
from si_xen.request import Request

from . import fakeimage
from .test_initramfs_slim import MD, MODULE_FILES, main_archive, member

V = "6.1.0-99-amd64"
INITRD = f"/boot/initrd.img-{V}"
BIG = [f"drivers/gpu/drm/big{i}.ko" for i in range(40)]  # what a Xen guest never loads: 16 MiB


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path / "cache"))


def most_like(root: str, marker: bytes = b"") -> str:
    """The image's initramfs replaced by one that carries every machine's drivers (and a file
    si-marker holding ``marker``, if given)."""
    data = main_archive(modules=MODULE_FILES + BIG)
    big = b"".join(member(f"{MD}/kernel/{m}", random.Random(m).randbytes(400_000)) for m in BIG)
    big += member("si-marker", marker) if marker else b""
    end = data.rindex(b"070701")  # the trailer: the big modules go before it
    with open(os.path.join(root, INITRD.lstrip("/")), "wb") as f:
        f.write(gzip.compress(data[:end] + big + data[end:], 1))
    return root


def plan_of(root: str, tmp_path, **kw):
    image = open_image(root)
    o = dict(config.BUILTIN, hostname="vm1", dhcp=True, dir=str(tmp_path), output=str(tmp_path), **kw)
    return planner.make_plan(Request.from_options(o), image, survey(root)), image


def test_auto_boots_a_xen_sized_initramfs_and_the_memory_check_uses_it(tmp_path):
    root = most_like(fakeimage.make(tmp_path / "img"))
    plan, image = plan_of(root, tmp_path, memory="240M")
    k = planner.check_boot(plan, image)
    assert k.slim and k.own_need > k.memory_need <= 240, (k.own_need, k.memory_need)
    kept = {os.path.basename(n) for n in initramfs.scan(k.slim).names if n.endswith(".ko")}
    assert "xen-blkfront.ko" in kept and "ext4.ko" in kept and not kept & {os.path.basename(m) for m in BIG}
    assert "Xen-sized" in planner.noted([plan], k)[0].initramfs_note
    # the image's own needs more than 240M: refused with it, naming the need
    plan, image = plan_of(root, tmp_path, memory="240M", initramfs="image")
    with pytest.raises(Fatal, match=rf"need {k.own_need} MiB to boot"):
        planner.check_boot(plan, image)


def test_one_with_nothing_to_leave_out_boots_as_it_is_and_slim_refuses_it(tmp_path):
    root = fakeimage.make(tmp_path / "img")  # its initramfs holds no kernel modules
    plan, image = plan_of(root, tmp_path)
    k = planner.check_boot(plan, image)
    assert k.slim is None and "holds no kernel modules" in k.note and k.memory_need == k.own_need
    plan, image = plan_of(root, tmp_path, initramfs="slim")
    with pytest.raises(Fatal, match="--initramfs slim: the image's initramfs .* holds no kernel modules") as e:
        planner.check_boot(plan, image)
    assert "--initramfs image" in e.value.fix


def test_slim_with_a_kernel_of_dom0_is_refused(tmp_path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    o = dict(config.BUILTIN, hostname="vm1", dhcp=True, dir=str(tmp_path), output=str(tmp_path),
             kernel=str(kernel), initramfs="slim")
    with pytest.raises(Fatal, match="--initramfs slim .* --kernel"):
        Request.from_options(o)
    with pytest.raises(Fatal, match="invalid --initramfs 'small'"):
        Request.from_options({**o, "kernel": None, "initramfs": "small"})


def test_the_boot_facts_kept_are_the_images_not_a_vms_choice(tmp_path, monkeypatch):
    root = most_like(fakeimage.make(tmp_path / "img"))
    facts = str(tmp_path / "facts")
    plan, image = plan_of(root, tmp_path)
    first = planner.check_boot(plan, image, facts)
    planner.remember_boot(plan, first, facts)
    monkeypatch.setattr(planner.boot, "memory_needed", lambda *a: pytest.fail("measured again"))
    plan, image = plan_of(root, tmp_path, initramfs="image")
    own = planner.check_boot(plan, image, facts)
    assert own.slim is None and own.memory_need == first.own_need
    # a further VM's Xen-sized initramfs comes from the facts: no hash of the image's file, no slimming
    slim_cached = initramfs_slim.slim_cached
    monkeypatch.setattr(initramfs_slim, "slim_cached", lambda *a, **k: pytest.fail("looked up again"))
    plan, image = plan_of(root, tmp_path)
    old = os.stat(first.slim).st_mtime - 8 * 86400
    os.utime(first.slim, (old, old))
    again = planner.check_boot(plan, image, facts)
    assert again.slim == first.slim and again.memory_need == first.memory_need
    assert os.stat(first.slim).st_mtime > old + 86400, "booted from the facts: marked used, never pruned as unused"
    os.unlink(first.slim)  # the cache emptied: looked up (made) again, never a missing file booted
    with pytest.raises(pytest.fail.Exception, match="looked up again"):
        planner.check_boot(plan, image, facts)
    monkeypatch.setattr(initramfs_slim, "slim_cached", slim_cached)
    again = planner.check_boot(plan, image, facts)  # made again
    monkeypatch.setattr(initramfs_slim, "VERSION", initramfs_slim.VERSION + 1)  # si-xen upgraded
    newer = planner.check_boot(plan, image, facts)
    assert newer.slim != again.slim and os.path.isfile(newer.slim), "a new VERSION boots a new file"


def test_direct_boot_copies_the_slim_one_out_and_a_clone_shares_it(tmp_path):
    root = most_like(fakeimage.make(tmp_path / "img"))
    plan, image = plan_of(root, tmp_path)
    k = planner.check_boot(plan, image)

    class Journal:
        def makedirs(self, d):
            os.makedirs(d, exist_ok=True)

        def made(self, thing, *a):
            return thing

    base = tmp_path / "bases" / "b.img"
    base.parent.mkdir()
    base.write_bytes(b"")
    _, initrd = boot.copy_out(Guest(root), k, str(tmp_path / "vm"), Journal(), shared=str(base))
    slim = open(k.slim, "rb").read()
    kept = tmp_path / "bases" / f"b.initrd-xen-{os.path.basename(k.slim)[:-4]}"  # named by what made it, no .img
    assert open(initrd, "rb").read() == slim and kept.read_bytes() == slim
    assert (tmp_path / "bases" / "b.vmlinuz").exists() and not (tmp_path / "bases" / "b.initrd").exists()


def test_grub_boots_the_slim_one_beside_the_guests_own(tmp_path):
    root = most_like(fakeimage.make(tmp_path / "img"))
    plan, image = plan_of(root, tmp_path, boot="pygrub")
    k = planner.check_boot(plan, image)
    g = RecordingGuest(root)
    stale = os.path.join(root, "boot/initrd.img-6.1.0-1-amd64.xen")
    open(stale, "wb").close()  # an earlier kernel's, from an update
    boot.write_grub_cfg(g, k, "xvda2", False, "Debian (si-xen)")
    cfg = open(os.path.join(root, "boot/grub/grub.cfg")).read()
    entries = cfg.split("menuentry ")[1:]
    assert len(entries) == 2 and f"initrd /boot/initrd.img-{V}.xen" in entries[0] and \
        f"initrd /boot/initrd.img-{V}\n" in entries[1]
    assert open(os.path.join(root, f"boot/initrd.img-{V}.xen"), "rb").read() == open(k.slim, "rb").read()
    assert not os.path.exists(stale) and {f"{INITRD}.xen", "/boot/initrd.img-6.1.0-1-amd64.xen"} <= g.touched
    # --initramfs image: one entry, the .xen gone
    boot.write_grub_cfg(g, planner.check_boot(*plan_of(root, tmp_path, boot="pygrub", initramfs="image")),
                        "xvda2", False, "Debian (si-xen)")
    assert open(os.path.join(root, "boot/grub/grub.cfg")).read().count("menuentry") == 1
    assert not os.path.exists(os.path.join(root, f"boot/initrd.img-{V}.xen"))
