"""What no VM needs any more once a VM's image generation changed (an update, a rebuild, a
removal): the image manifests no VM is at and the Xen-sized initramfs files none of the
generations in use boot (initramfs_prune). Apart from the journal, whose records it reads."""

from __future__ import annotations

import os

from . import initramfs_prune, journal
from .errors import Fatal
from .image import manifest, survey

SPARE_MANIFESTS = 3600  # s: a manifest this young may be a command's under way (its walk, no record yet)


def unused(state_dir: str, warn) -> None:
    """The image manifests no VM is at (an update or a drift report reads the one its VM is at),
    keeping each image's last walk, as a deploy under way has not recorded its VM yet; and the
    Xen-sized initramfs files none of those generations boot. It runs once the VM is done, so a
    failure is ``warn``ed only."""
    try:
        keep = generations_in_use(state_dir)
        facts = os.path.join(state_dir, "images")
        manifest.prune(facts, keep, spare_seconds=SPARE_MANIFESTS)
        initramfs_prune.prune(facts, keep)
    except (OSError, Fatal) as e:  # e.g. another VM's damaged journal: that VM's commands say so
        warn(f"the image facts and initramfs files no VM uses were not pruned: {e} (the next si_rmxenvm, "
             "si_updatexenvm or --rebuild tries again)")


def generations_in_use(state_dir: str) -> set[str]:
    """The image fingerprints a VM's record names, and each image's last walk."""
    keep = {s.record.image_fingerprint for s in journal.all_states(state_dir) if s.record}
    return keep | survey.remembered_fingerprints(os.path.join(state_dir, "images"))
