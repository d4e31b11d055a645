"""Fixtures the integration tests share."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import need_tools


@pytest.fixture
def xfs_dir(tmp_path, as_root):
    """An XFS filesystem (reflink=1 is mkfs.xfs's default) on a loop device."""
    need_tools("mkfs.xfs", "mount", "umount")
    img, mnt = tmp_path / "xfs.img", tmp_path / "xfs"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(8 * 2**30)
    subprocess.run(["mkfs.xfs", "-q", str(img)], check=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
