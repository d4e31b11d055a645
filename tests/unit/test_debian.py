"""debian/ agrees with the tree it packages (read as text: no dpkg tools needed)."""

import os
import re

from si_xen import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read(*path: str) -> str:
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def test_changelog_version_is_the_package_version():
    top = read("debian", "changelog").splitlines()[0]
    m = re.fullmatch(r"si-xen \(([^)]+)\) \S+; urgency=\w+", top)
    assert m, top
    assert m[1] == __version__, "debian/changelog needs an entry for si_xen.__version__ (dch -v VERSION)"


def test_every_man_page_is_packaged():
    listed = read("debian", "si-xen.manpages").split()
    pages = sorted(f"man/{n}" for n in os.listdir(os.path.join(ROOT, "man")) if re.search(r"\.[1-9]$", n))
    assert sorted(listed) == pages
