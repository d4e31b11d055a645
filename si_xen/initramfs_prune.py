"""The cache of Xen-sized initramfs files pruned (si_rmxenvm): initramfs_slim writes and reads it,
marking each entry it uses; this removes what nothing boots any more."""

from __future__ import annotations

import json
import os
import stat
import time

from . import initramfs
from .initramfs_slim import params

# An entry stays while the boot facts of an image generation in use name it (planner.remember_boot's
# state_dir/images/IMAGE-FINGERPRINT.json: a VM's generation, or an image's last walk): further VMs of those boot it at no cost. Any other file goes once it has not
# been made or used for UNUSED_DAYS: a deploy under way has no facts yet, a VM on another root
# filesystem or a dry run wrote none, and the cache is the host's, shared by every state_dir.
UNUSED_DAYS = 7


def prune(facts_dir: str, generations: set[str], unused_days: float = UNUSED_DAYS) -> list[str]:
    """Removes the files of the cache (slim files, their verdicts, scans, a dead run's temporary
    files) that the boot facts of ``generations`` (image fingerprints) in ``facts_dir`` do not name
    and that were not made or used for ``unused_days``; returns their names."""
    named = _named(facts_dir, generations)
    old = time.time() - unused_days * 86400
    cdir = initramfs.cache_dir()
    try:
        names = sorted(os.listdir(cdir))
    except OSError:  # none yet, or not readable: a cache only costs disk space
        return []
    gone = []
    for n in names:
        if not n.startswith(".") and n.rsplit(".", 1)[0] in named:
            continue
        p = os.path.join(cdir, n)
        try:
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime > old:
                continue
            os.unlink(p)
        except OSError:  # gone already (another si_rmxenvm), or a read-only cache
            continue
        gone.append(n)
    return gone


def _named(facts_dir: str, generations: set[str]) -> set[str]:
    """The cache names (DIGEST-slim-PARAMS) the boot facts of ``generations`` give their VMs, by
    today's parameters only (planner keys them FSTYPES:PARAMS): after a new VERSION the VMs of a
    generation get a new file, and the old one is no longer used."""
    out: set[str] = set()
    try:
        names = os.listdir(facts_dir)
    except OSError:
        return out
    for n in names:
        if not (n.endswith(".json") and n[:-5].rsplit("-", 1)[-1] in generations):
            continue
        try:
            with open(os.path.join(facts_dir, n)) as f:
                slim = json.load(f).get("slim") or {}
            out |= {os.path.basename(r["path"]).removesuffix(".img") for key, r in slim.items()
                    if r.get("path") and key.rpartition(":")[2] == params(key.rpartition(":")[0].split(","))}
        except (OSError, ValueError, AttributeError, TypeError, KeyError):
            continue  # not remember_boot's: it names nothing
    return out
