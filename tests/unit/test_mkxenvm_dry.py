"""si_mkxenvm --dry-run on a small fake image: what it says before anything is made."""

from si_xen.cli import common, mkxenvm

from . import fakeimage


def dry_run(tmp_path, capsys, **image):
    root = fakeimage.make(tmp_path / "img", **image)
    (tmp_path / "xen.conf").write_text(f"[paths]\nstate_dir = {tmp_path}/state\n")
    (tmp_path / "vms").mkdir()
    code = common.run_main("si_mkxenvm", mkxenvm.body, [root, "--hostname", "vm1", "--dhcp", "--dir",
                                                        str(tmp_path / "vms"), "--output", str(tmp_path),
                                                        "--config", str(tmp_path / "xen.conf"), "--dry-run"])
    return code, *capsys.readouterr()


def test_an_unknown_os_is_said_before_the_deploy(tmp_path, capsys):
    code, out, err = dry_run(tmp_path, capsys, os_release='NAME="Hurd"\nID=gnuhurd\n')
    assert code == 0 and "Dry run: nothing was changed." in out
    assert err == "WARNING: unknown OS in image 'img' (Hurd): generic sysvinit handling only\n"


def test_a_known_os_gives_no_warning(tmp_path, capsys):
    code, out, err = dry_run(tmp_path, capsys)
    assert code == 0 and err == ""


def test_the_source_a_vm_records_is_what_the_image_was_taken_with(tmp_path, monkeypatch):
    from si_xen.image import source

    (tmp_path / "xen.conf").write_text("[image:deb]\nssh_user = si\noverride = base web\n")
    taken = []
    monkeypatch.setattr(source, "select", lambda *a: taken.append(a[:4]) or "IMAGE")
    args = mkxenvm.build_parser().parse_args(["deb", "--hostname", "vm1", "--server", "s1:8730", "--config",
                                              str(tmp_path / "xen.conf")])
    image, said = mkxenvm._image(args, "deb")
    assert image == "IMAGE" and taken == [("deb", "s1:8730", ["base", "web"], "si")]
    assert said == {"server": "s1:8730", "ssh_user": "si", "overrides": ["base", "web"]}
