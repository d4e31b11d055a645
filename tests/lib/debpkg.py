"""Build si-xen's Debian package from a checkout, and lint it.

``build_deb(src, dest)`` copies the files git tracks (as they are in the work tree, so an
uncommitted edit is built too; nothing untracked, nothing built before) into a scratch tree,
runs ``dpkg-buildpackage -us -uc`` there and leaves the results in ``dest``: the checkout
is never written to. Used by the package test (tests/integration/test_debian_package.py)
and by the system tier, which installs the same .deb into its Xen dom0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Debian's own tools, whatever the caller's PATH: pybuild must get /usr/bin/python3, not a
# python3 that a virtualenv or pyenv puts first.
BUILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root"}


class BuildError(Exception):
    pass


def _run(argv: list[str], cwd: str | Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env or BUILD_ENV, capture_output=True, text=True)


def tracked_files(src: Path) -> list[str]:
    cp = _run(["git", "-C", str(src), "ls-files", "-z"], env=dict(os.environ))
    if cp.returncode:
        raise BuildError(f"{src} is not a git checkout: {cp.stderr.strip()}")
    return [f for f in cp.stdout.split("\0") if f and os.path.lexists(src / f)]  # deleted in the tree: not built


def changelog_version(src: Path) -> str:
    cp = _run(["dpkg-parsechangelog", "-l", str(src / "debian" / "changelog"), "-S", "Version"])
    if cp.returncode:
        raise BuildError(f"cannot read debian/changelog: {cp.stderr.strip()}")
    return cp.stdout.strip()


def build_deb(src: Path, dest: Path, *, source: bool = True) -> Path:
    """Build the package from ``src``'s tracked files; return the .deb (in ``dest``).

    ``source``: build the source package too (``dpkg-buildpackage -us -uc``), so that lintian
    can check it; else binary only (``-b``). The build log is ``dest/build.log``.
    """
    src, dest = Path(src), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    version = changelog_version(src)
    with tempfile.TemporaryDirectory(prefix="si-xen-deb.", dir=dest) as scratch:
        tree = Path(scratch) / f"si-xen-{version}"
        tree.mkdir()
        for rel in tracked_files(src):
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, tree / rel, follow_symlinks=False)
        cp = _run(["dpkg-buildpackage", "-us", "-uc", *([] if source else ["-b"])], cwd=tree)
        (dest / "build.log").write_text(cp.stdout + cp.stderr)
        if cp.returncode:
            tail = "\n".join((cp.stdout + cp.stderr).splitlines()[-25:])
            raise BuildError(f"dpkg-buildpackage failed ({cp.returncode}); log {dest / 'build.log'}:\n{tail}")
        for p in Path(scratch).iterdir():  # the artefacts sit beside the tree
            if p.is_file():
                shutil.move(p, dest / p.name)
    deb = dest / f"si-xen_{version}_all.deb"
    if not deb.is_file():
        raise BuildError(f"dpkg-buildpackage made no {deb.name}")
    return deb


def changes_of(deb: Path) -> Path:
    """The .changes file that dpkg-buildpackage wrote beside ``deb``."""
    found = sorted(Path(deb).parent.glob(Path(deb).name.split("_all.deb")[0] + "_*.changes"))
    if not found:
        raise BuildError(f"no .changes beside {deb}")
    return found[0]


def lintian(deb: Path) -> subprocess.CompletedProcess:
    """lintian at its default level on the build's .changes (source and binary), failing on
    errors and warnings; informational and pedantic tags are shown too, for the report."""
    return _run(["lintian", "--fail-on", "error,warning", "--display-info", "--pedantic",
                 "--show-overrides", str(changes_of(deb))])
