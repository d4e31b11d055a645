"""A guest whose os-release is missing or unusable is recognised by the release files distros
ship, or refused by one FATAL naming what was read; an unlisted distro's NIC name comes from
the systemd it carries; the OS is said once, never with the temporary mount's path."""

import os

import pytest

from si_xen.distros import detect
from si_xen.errors import Fatal
from si_xen.fixups import run_all
from si_xen.guestfs import Guest
from tests.unit.fixups.conftest import STATIC
from tests.unit.fixups.trees import write

from .test_mkxenvm_dry import dry_run

GARBAGE = "\x7fELF\x02\x01\x01\0\0\0 garbage = \"x\nPRETTY_NAME=Broken\n"
DEB_SYSTEMD = "usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so"


@pytest.mark.parametrize(("files", "want"), [
    ({"etc/debian_version": "12.5\n", DEB_SYSTEMD: ""}, ("debian", "12", "enX0", True)),
    ({"etc/debian_version": "trixie/sid\n"}, ("debian", "13", "enX0", True)),
    ({"etc/debian_version": "11.9\n"}, ("debian", "11", "eth0", True)),
    ({"etc/redhat-release": "Rocky Linux release 8.9 (Green Obsidian)\n"}, ("rocky", "8.9", "eth0", True)),
    ({"etc/centos-release": "CentOS Stream release 9\n"}, ("centos", "9", "enX0", True)),
    ({"etc/SuSE-release": "SUSE Linux Enterprise Server 11 (x86_64)\nVERSION = 11\n"}, ("sles", "11", "eth0", True)),
    ({"etc/lsb-release": "DISTRIB_ID=Ubuntu\nDISTRIB_RELEASE=16.04\n"}, ("ubuntu", "16.04", "eth0", True)),
], ids=["debian12", "debian-testing", "debian11", "rocky8", "centos9", "sles11", "ubuntu1604"])
@pytest.mark.parametrize("os_release", [GARBAGE, 'NAME="x"\nID=\n', "ID=\"Not An Id!\"\n"],
                         ids=["garbage", "empty-id", "bad-id"])
def test_release_files_identify_a_guest_with_an_unusable_os_release(tmp_path, files, want, os_release):
    root = write(tmp_path, {**files, "etc/os-release": os_release})
    o = detect(Guest(root))
    assert (o.id, o.release, o.nic, o.known) == want


def test_nothing_identifies_the_guest_one_fatal_naming_the_files(tmp_path):
    root = write(tmp_path, {"etc/os-release": GARBAGE, "etc/issue": "Welcome\n"})
    with pytest.raises(Fatal) as e:
        detect(Guest(root))
    assert e.value.problem.startswith("cannot tell which OS the image holds: read /etc/os-release ")
    for f in ("/usr/lib/os-release", "/etc/debian_version", "/etc/redhat-release", "/etc/SuSE-release",
              "/etc/lsb-release", "/etc/centos-release"):
        assert f in e.value.problem
    assert "/etc/os-release with ID=" in e.value.fix and root not in str(e.value)


def test_an_unlisted_distro_gets_the_nic_name_its_systemd_gives(tmp_path):
    def nic(lib):
        files = {"etc/os-release": 'NAME="Arch Linux"\nID=arch\nPRETTY_NAME="Arch Linux"\n'}
        if lib:
            files.update({lib: "", "usr/lib/systemd/systemd": ""})
        o = detect(Guest(write(tmp_path / str(len(os.listdir(tmp_path))), files)))
        assert (o.id, o.known) == ("arch", False)
        return o.nic

    assert nic("usr/lib/systemd/libsystemd-shared-255.so") == "enX0"
    assert nic("usr/lib64/systemd/libsystemd-shared-254.5-2.so") == "enX0"
    assert nic("usr/lib/systemd/libsystemd-shared-249.so") == "eth0"  # before systemd knew Xen's vif
    assert nic(None) == "eth0"  # no udev of systemd's: the kernel's name


def test_unknown_os_warning_names_no_host_path(tmp_path):
    root = write(tmp_path, {"etc/os-release": 'NAME="Gentoo"\nID=gentoo\nPRETTY_NAME="Gentoo Linux"\n'})
    msgs = []
    run_all(root, STATIC, log=msgs.append)
    said = [m for m in msgs if "unknown OS" in m]
    assert said == ["WARNING: unknown OS (Gentoo Linux): generic sysvinit handling only"]
    assert not any(root in m or tmp_path.name in m for m in msgs)


def test_dry_run_garbage_os_release_with_debian_version_is_debian_said_nothing(tmp_path, capsys):
    os.makedirs(tmp_path / "img/etc")
    (tmp_path / "img/etc/debian_version").write_text("12.5\n")
    code, out, err = dry_run(tmp_path, capsys, os_release=GARBAGE)
    assert code == 0 and err == "" and "Debian GNU/Linux 12.5" in out


def test_dry_run_unidentified_image_is_one_fatal(tmp_path, capsys):
    code, out, err = dry_run(tmp_path, capsys, os_release=GARBAGE)
    assert code == 1 and err.count("\n") == 1 and err.startswith("FATAL: ")
    assert "read /etc/os-release" in err and "/etc/debian_version" in err and "Traceback" not in err
    assert str(tmp_path) not in err


def test_a_link_loop_is_named_by_its_guest_path_only(tmp_path):
    root = write(tmp_path, {"etc/os-release": 'ID=debian\nVERSION_ID="12"\n', "usr/sbin/ifup": ""})
    os.makedirs(f"{root}/etc/network")
    os.symlink("interfaces", f"{root}/etc/network/interfaces")
    msgs = []
    run_all(root, STATIC, only="network", log=msgs.append)
    assert msgs == ["WARNING: network: /etc/network/interfaces: too many levels of symbolic links; left alone"]
