"""atomic: a file is replaced whole or left as it was, with the mode asked, no temporary left."""

import os
import stat

import pytest

from si_xen import atomic


def test_write_text_and_bytes_with_their_mode(tmp_path):
    p = tmp_path / "f"
    atomic.write(str(p), "old\n")
    atomic.write(str(p), b"\x00new", 0o600)
    assert p.read_bytes() == b"\x00new" and stat.S_IMODE(p.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f"]


def test_a_failed_fill_leaves_the_old_file_and_no_temporary(tmp_path):
    p = tmp_path / "f"
    p.write_text("old")
    with pytest.raises(OSError), atomic.replacing(str(p)) as tmp:
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")
    assert p.read_text() == "old" and os.listdir(tmp_path) == ["f"]
    with atomic.replacing(str(p), 0o755) as tmp:
        with open(tmp, "w") as f:
            f.write("new")
    assert p.read_text() == "new" and stat.S_IMODE(p.stat().st_mode) == 0o755


def test_symlink_replaces_a_link(tmp_path):
    link = tmp_path / "current"
    atomic.symlink("gen-1", str(link))
    atomic.symlink("gen-2", str(link))
    assert os.readlink(link) == "gen-2" and os.listdir(tmp_path) == ["current"]
