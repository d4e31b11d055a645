"""Fixtures the integration tests share."""

from __future__ import annotations

import pytest

from tests.conftest import need_tools

from .harness import loop_fs


@pytest.fixture
def xfs_dir(tmp_path, as_root):
    """An XFS filesystem (reflink=1 is mkfs.xfs's default) on a loop device."""
    need_tools("mkfs.xfs", "mount", "umount")
    with loop_fs(tmp_path, "xfs", 8 * 2**30, ["mkfs.xfs", "-q"]) as mnt:
        yield mnt
