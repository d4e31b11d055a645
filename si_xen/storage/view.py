"""The image as the copy must see it, for mke2fs -d: SystemImager's install-time exclusions
(/run, /tmp, lost+found ... with content) masked by empty tmpfs mounts, so even an image
straight from debootstrap is written in one pass.

The masks live in a private mount namespace of the copying process (unshare(1), which then
runs this module, which execs the copy): the host never sees them, they need no clean-up,
even after SIGKILL, and the image is never touched.
"""

from __future__ import annotations

import os
import stat
import sys

from .. import proc


def masked(image: str, dirs: tuple[str, ...], argv: list[str]) -> list[str]:
    """``argv`` run with ``dirs`` (guest paths of real directories) masked in ``image``."""
    if not dirs:
        return argv
    return ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", __name__, image, *dirs, "--", *argv]


def main(argv: list[str]) -> int:
    i = argv.index("--")
    image, dirs, cmd = argv[0], argv[1:i], argv[i + 1:]
    for d in dirs:
        path = os.path.join(image, d.lstrip("/"))
        st = os.lstat(path)
        # a guest is untrusted: only a real directory, reached through no symlink, is masked
        if not stat.S_ISDIR(st.st_mode) or os.path.realpath(path) != os.path.normpath(path):
            print(f"si-xen: {d} in {image} is not a plain directory: not masked", file=sys.stderr)
            return 2
        opts = f"mode={stat.S_IMODE(st.st_mode):o},uid={st.st_uid},gid={st.st_gid},size=1m,nr_inodes=16"
        proc.run(["mount", "-t", "tmpfs", "-o", opts, "si-xen-mask", path])
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
