"""What the one-pass copy leaves out (the survey) and how it is masked (storage/view.py)."""

import os
import sys

from si_xen.image.survey import survey
from si_xen.storage import view


def test_survey_names_the_excluded_content_and_only_real_directories(tmp_path):
    for rel in ("run/lock/x.pid", "tmp/log", "var/lost+found/#12", "var/lib/nfs/rpc_pipefs/gssd", "etc/system-id",
                "srv/run/kept", "home/u/tmp/kept"):
        os.makedirs(tmp_path / os.path.dirname(rel), exist_ok=True)
        (tmp_path / rel).write_text("x")
    os.makedirs(tmp_path / "sys")  # empty: nothing to leave out
    os.makedirs(tmp_path / "lost+found")
    assert survey(str(tmp_path)).excluded == ("/etc/system-id", "/run", "/tmp", "/var/lib/nfs/rpc_pipefs",
                                              "/var/lost+found")
    os.rename(tmp_path / "tmp", tmp_path / "real-tmp")
    os.symlink("real-tmp", tmp_path / "tmp")  # a link is not followed, so not masked either
    assert "/tmp" not in survey(str(tmp_path)).excluded


def test_masked_argv_runs_the_copy_in_a_private_namespace():
    argv = ["mkfs.ext4", "-q", "-F", "-d", "/img", "/d.img"]
    assert view.masked("/img", (), argv) == argv
    assert view.masked("/img", ("/run", "/tmp"), argv) == [
        "unshare", "--mount", "--propagation", "private", sys.executable, "-m", "si_xen.storage.view",
        "/img", "/run", "/tmp", "--", *argv]


def test_a_symlinked_directory_is_refused_not_masked(tmp_path, capsys):
    (tmp_path / "elsewhere").mkdir()
    os.symlink("elsewhere", tmp_path / "run")
    assert view.main([str(tmp_path), "/run", "--", "true"]) == 2
    assert "not a plain directory" in capsys.readouterr().err


def test_each_filesystem_masks_its_exclusions_and_the_mount_points_below_it():
    from types import SimpleNamespace

    from si_xen.plan import Disk
    from si_xen.populate import _masks

    disks = (Disk("disk", "/", "ext4", 1, ""), Disk("var", "/var", "ext4", 1, ""), Disk("var-log", "/var/log", "ext4", 1, ""),
             Disk("swap", "", "swap", 1, ""))
    plan = SimpleNamespace(disks=disks, excluded=("/etc/system-id", "/run", "/var/lib/nfs/rpc_pipefs", "/var/log/lost+found"))
    assert _masks(plan, disks[0]) == ("/etc/system-id", "/run", "/var")
    assert _masks(plan, disks[1]) == ("/lib/nfs/rpc_pipefs", "/log")
    assert _masks(plan, disks[2]) == ("/lost+found",)
