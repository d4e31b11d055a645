"""Fixtures the integration tests share."""

from __future__ import annotations

import os

import pytest

from tests.conftest import TEST_CACHE, need_tools

from .harness import loop_fs

# si_mkxenvm's own cache (the Xen-sized initramfs files) under the tests' cache, never the host's
# /var/cache/si-xen, which si_rmxenvm prunes by the host's VMs: the test cache goes with the run
os.environ.setdefault("SI_XEN_CACHE", os.path.join(TEST_CACHE, "si-xen-cache"))


@pytest.fixture
def xfs_dir(tmp_path, as_root):
    """An XFS filesystem (reflink=1 is mkfs.xfs's default) on a loop device."""
    need_tools("mkfs.xfs", "mount", "umount")
    with loop_fs(tmp_path, "xfs", 8 * 2**30, ["mkfs.xfs", "-q"]) as mnt:
        yield mnt
