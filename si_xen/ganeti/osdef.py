"""The OS definition directory Ganeti reads (``/usr/share/ganeti/os/systemimager``): five
two-line scripts, ganeti_api_version, parameters.list (from params.PARAMS) and variants.list
(a link to the list ``si_xenhooks ganeti-variants`` writes: the images)."""

from __future__ import annotations

import os

from .. import atomic
from .params import parameters_list
from .scripts import SCRIPTS

NAME = "systemimager"
API_VERSION = "20"
OS_DIR = f"/usr/share/ganeti/os/{NAME}"
VARIANTS = "/var/lib/si-xen/ganeti/variants.list"

SCRIPT = '''#!/usr/bin/python3
# si-xen generated: the {script} script of Ganeti's "systemimager" OS (ganeti-os-interface(7), API 20).
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.realpath(__file__)), "..", "..", ".."))
from si_xen.ganeti.scripts import main  # noqa: E402

main("{script}")
'''


def files() -> dict[str, tuple[str, int]]:
    """name -> (content, mode) of every regular file of the OS definition."""
    out = {s: (SCRIPT.format(script=s), 0o755) for s in SCRIPTS}
    out["ganeti_api_version"] = (API_VERSION + "\n", 0o644)
    out["parameters.list"] = (parameters_list(), 0o644)
    return out


def write(dest: str, variants: str | None = VARIANTS) -> list[str]:
    """The OS definition in ``dest`` (``variants``: where variants.list links to; None for the
    checked-in copy, hooks/ganeti/systemimager, whose link the Debian package makes); returns
    what changed."""
    os.makedirs(dest, exist_ok=True)
    changed = []
    for name, (text, mode) in files().items():
        path = os.path.join(dest, name)
        try:
            with open(path) as f:
                same = f.read() == text and (os.stat(path).st_mode & 0o777) == mode
        except OSError:
            same = False
        if not same:
            atomic.write(path, text, mode)
            changed.append(name)
    link = os.path.join(dest, "variants.list")
    if variants is None:
        return changed
    if not (os.path.islink(link) and os.readlink(link) == variants):
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(variants, link)
        changed.append("variants.list")
    return changed


def write_variants(names: list[str], path: str = VARIANTS) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic.write(path, "# si-xen: the images Ganeti offers as systemimager+IMAGE (si_xenhooks ganeti-variants)\n"
                 + "".join(n + "\n" for n in names))


if __name__ == "__main__":  # python3 -m si_xen.ganeti.osdef hooks/ganeti/systemimager
    import sys

    print(", ".join(write(sys.argv[1], None)) or "up to date")
