"""An image as SystemImager's si_getimage leaves it: the tree copied with its exclusions.

si_getimage pulls a golden client with ``rsync -aHS --numeric-ids --delete --delete-excluded
--exclude-from=/tmp/.exclude.IMAGE`` (reference/systemimager.md §4.1); that list holds
/etc/systemimager/getimage.exclude, whose master copy drops the SSH host keys and
/etc/hostname besides caches and runtime state. Real site images therefore have neither.
"""

from __future__ import annotations

import os
import subprocess
import tempfile

# /etc/systemimager/getimage.exclude of SystemImager master, entry for entry (rsync filter
# syntax: "+ " lines are includes, the rest excludes).
GETIMAGE_EXCLUDE = (
    "/etc/ssh/ssh_host_*",
    "/etc/hostname",
    "/selinux/*",
    "/lib/klibc/events/*",
    "/media/*",
    "+ /var/lib/nfs/statd/sm",
    "+ /var/lib/nfs/statd/sm.bak",
    "/var/lib/nfs/state",
    "/var/lib/nfs/*tab",
    "/var/lib/nfs/*/*",
    "/var/lib/nfs/*/*/*",
    "/etc/lvm/.cache",
    "/etc/lvm/backup/*",
    "/etc/lvm/archive/*",
    "/etc/iftab",
    "/etc/udev/rules.d/70-persistent-net.rules",
    "/etc/udev/rules.d/75-persistent-net-generator.rules",
    "/etc/udev/rules.d/z25_persistent-net.rules",
    "/etc/udev/rules.d/z45_persistent-net-generator.rules",
    "/etc/blkid/blkid.tab",
    "/etc/blkid.tab",
)


def getimage_copy(src: str, dst: str) -> None:
    """Make ``dst`` the image si_getimage would make of the golden client tree ``src``
    (run as root to keep owners). ``dst`` is made if missing; what it had beyond ``src`` goes."""
    os.makedirs(dst, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", prefix="getimage.exclude.", suffix=".txt") as f:
        f.write("\n".join(GETIMAGE_EXCLUDE) + "\n")
        f.flush()
        subprocess.run(["rsync", "-aHS", "--numeric-ids", "--delete", "--delete-excluded",
                        f"--exclude-from={f.name}", src.rstrip("/") + "/", dst.rstrip("/") + "/"], check=True)
