"""The one way si-xen writes a file that readers must see whole or not at all."""

from __future__ import annotations

import os
import tempfile


def write(path: str, text: str, mode: int = 0o644) -> None:
    """Write beside ``path`` under a unique name, then rename over it (concurrent writers
    of one cache entry each rename a whole file; a crash leaves the old one)."""
    d = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
