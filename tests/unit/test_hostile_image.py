"""A hostile or broken image gives one FATAL line naming the image and the guest path."""

import os

import pytest

from si_xen import boot, config, initramfs, planner, sshdconfig
from si_xen.cli import common
from si_xen.errors import Fatal
from si_xen.guestfs import GuestPathError
from si_xen.image import open_image
from si_xen.image.survey import survey
from si_xen.request import Request

from . import fakeimage


@pytest.fixture
def root(tmp_path):
    return fakeimage.make(tmp_path / "img")


def loop(root, gpath):
    p = os.path.join(root, gpath.lstrip("/"))
    if os.path.lexists(p):
        os.unlink(p)
    os.symlink(os.path.basename(p), p)


def test_an_os_release_loop_is_named(root):
    loop(root, "/etc/os-release")
    with pytest.raises(Fatal, match=r"^image 'img' is unusable: /etc/os-release: too many levels of symbolic "
                                    rf"links \(fix or remove it in {root}\)$"):
        open_image(root)


def test_a_loop_among_the_ssh_keys_is_found_before_the_deploy(root):
    os.makedirs(os.path.join(root, "etc/ssh"))
    open(os.path.join(root, "etc/ssh/ssh_host_rsa_key"), "w").close()
    loop(root, "/etc/ssh/ssh_host_rsa_key.pub")
    image = open_image(root)
    with pytest.raises(Fatal, match=r"is unusable: /etc/ssh/ssh_host_rsa_key.pub: too many levels"), image.reading():
        sshdconfig.key_types(image.guest)


def test_ssh_dir_linked_out_of_the_root_stays_inside(root):
    os.symlink("/etc", os.path.join(root, "etc/ssh"))  # the dom0's /etc/ssh holds ssh_host_*_key files
    assert sshdconfig.key_types(open_image(root).guest) == []


@pytest.mark.parametrize("mode", ["image", "auto"])  # read to measure it, or to make the Xen-sized one
def test_an_unreadable_initramfs_is_named(root, tmp_path, monkeypatch, mode):
    image = open_image(root)
    plan = planner.make_plan(Request.from_options(dict(config.BUILTIN, hostname="vm1", dhcp=True, dir=str(tmp_path),
                                                       output=str(tmp_path), initramfs=mode)), image, survey(root))

    def denied(path, *a):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(initramfs, "scan_cached", denied)
    monkeypatch.setattr(planner.initramfs_slim, "slim_cached", denied)
    with pytest.raises(Fatal, match=r"^image 'img' is unusable: cannot read /boot/initrd.img-6.1.0-99-amd64: "
                                    r"Permission denied \(fix it in .*, or get the image again\)$"):
        planner.check_boot(plan, image)


@pytest.mark.parametrize("target", ["/etc/shadow", "../../../../../../../../etc/shadow"])
def test_a_kernel_linked_to_the_dom0s_shadow_is_not_the_dom0s(root, target):
    kernel = os.path.join(root, "boot/vmlinuz-6.1.0-99-amd64")
    os.unlink(kernel)
    os.symlink(target, kernel)
    image = open_image(root)
    assert image.guest.path("/boot/vmlinuz-6.1.0-99-amd64") == os.path.join(os.path.realpath(root), "etc/shadow")
    assert boot.find_kernel(image.guest) is None  # the guest has no /etc/shadow: no kernel at all


@pytest.mark.parametrize("exc,line", [
    (GuestPathError("etc/ssh", "/img", "too many levels of symbolic links"),
     "FATAL: cannot use guest path /etc/ssh in /img: too many levels of symbolic links (fix or remove it there)"),
    (PermissionError(13, "Permission denied", "/srv/x/etc/hostname"),
     "FATAL: Permission denied: /srv/x/etc/hostname (check that path; the log has the steps done)"),
    (IsADirectoryError(21, "Is a directory", "/srv/x/vmlinuz"),
     "FATAL: Is a directory: /srv/x/vmlinuz (check that path; the log has the steps done)"),
])
def test_run_main_backstop_is_one_fatal_line(capsys, exc, line):
    def body(argv):
        raise exc

    assert common.run_main("si_x", body, []) == 1
    assert capsys.readouterr().err == line + "\n"
