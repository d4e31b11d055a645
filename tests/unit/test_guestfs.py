"""A guest tree is untrusted: links in it never lead out of it."""

import os
import stat

import pytest

from si_xen.guestfs import Guest, GuestPathError


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "guest"
    outside = tmp_path / "dom0"
    (root / "etc").mkdir(parents=True)
    outside.mkdir()
    (outside / "hostname").write_text("dom0\n")
    return root, outside


@pytest.mark.parametrize("link", ["ABS", "../../dom0/hostname", "../../../../../../dom0/hostname"])
def test_writes_through_hostile_links_stay_inside(tree, link):
    root, outside = tree
    target = str(outside / "hostname") if link == "ABS" else link
    os.symlink(target, root / "etc" / "hostname")
    g = Guest(str(root))
    g.write_text("/etc/hostname", "vm\n")
    assert (outside / "hostname").read_text() == "dom0\n"
    assert g.path("/etc/hostname").startswith(str(root) + os.sep)


def test_absolute_link_restarts_at_guest_root(tree):
    root, _ = tree
    (root / "run").mkdir()
    (root / "run" / "resolv.conf").write_text("x")
    os.symlink("/run/resolv.conf", root / "etc" / "resolv.conf")
    g = Guest(str(root))
    assert g.path("/etc/resolv.conf") == str(root / "run" / "resolv.conf")
    assert g.read_text("/etc/resolv.conf") == "x"


def test_directory_link_out_is_confined(tree):
    root, outside = tree
    os.symlink(str(outside), root / "etc" / "ssh")
    g = Guest(str(root))
    g.write_text("/etc/ssh/hostname", "vm\n")
    assert (outside / "hostname").read_text() == "dom0\n"
    assert (root / str(outside).lstrip("/") / "hostname").read_text() == "vm\n"


def test_unlink_removes_the_link_not_its_target(tree):
    root, outside = tree
    os.symlink(str(outside / "hostname"), root / "etc" / "hostname")
    assert Guest(str(root)).unlink("/etc/hostname")
    assert (outside / "hostname").exists() and not os.path.lexists(root / "etc" / "hostname")


def test_link_loop_is_an_error(tree):
    root, _ = tree
    os.symlink("b", root / "etc" / "a")
    os.symlink("a", root / "etc" / "b")
    with pytest.raises(GuestPathError):
        Guest(str(root)).path("/etc/a")


def test_write_text_reports_no_change_and_keeps_mode(tree):
    root, _ = tree
    g = Guest(str(root))
    assert g.write_text("/etc/x/y", "a", mode=0o600)
    assert not g.write_text("/etc/x/y", "a")
    assert oct(os.stat(root / "etc/x/y").st_mode & 0o777) == "0o600"
    assert g.write_text("/etc/x/y", "b")
    assert oct(os.stat(root / "etc/x/y").st_mode & 0o777) == "0o600"


def test_link_loop_error_names_the_guest_path(tree):
    root, _ = tree
    os.symlink("ssh", root / "etc" / "ssh")
    with pytest.raises(GuestPathError, match=r"^/etc/ssh: too many levels of symbolic links \(in ") as e:
        Guest(str(root)).glob("etc/ssh", "*")
    assert e.value.gpath == "/etc/ssh"


def test_read_text_never_opens_what_is_not_a_regular_file(tree):
    root, _ = tree
    os.mkfifo(root / "etc" / "hostname")  # a reader would block for ever
    os.mkdir(root / "etc" / "hosts")
    specials = ["/etc/hostname", "/etc/hosts", "/etc/absent"]
    if os.geteuid() == 0:  # a device node of the image is the dom0's device
        os.mknod(root / "etc" / "zero", 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        specials.append("/etc/zero")
    g = Guest(str(root))
    assert [g.read_text(p, "-") for p in specials] == ["-"] * len(specials)


def test_write_text_refuses_a_directory_where_the_file_goes(tree):
    root, _ = tree
    os.mkdir(root / "etc" / "hostname")
    with pytest.raises(GuestPathError, match="is a directory"):
        Guest(str(root)).write_text("/etc/hostname", "vm1\n")
    assert os.listdir(root / "etc" / "hostname") == [] and not [n for n in os.listdir(root / "etc") if n.startswith(".")]
