"""The Debian package, as a user gets it: built from a clean copy of the checkout, lintian
clean, installed with apt into fresh Debian 12 and 13 chroots (dependencies from the
archive), working there, and purged without a trace (the file list compared, as piuparts does).

Needs root and deb.debian.org (or SI_XEN_TEST_MIRROR). The pristine chroots are cached
under $SI_XEN_TEST_CACHE/chroots/; each test works on a fresh copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import need_tools, require
from tests.lib import debpkg
from tests.lib.chroot import Chroot, remove_tree
from tests.unit import fakeimage

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SUITES = ("bookworm", "trixie")  # Debian 12 and 13
# xen-tools (Suggests) is in Debian 12 but no longer in 13: there si_xenhooks makes its dirs itself.
WITH_XEN_TOOLS = ("bookworm",)
IMAGES = "/var/lib/systemimager/images"
XEN_TOOLS_HOOKS = ("/usr/share/xen-tools/systemimager.d", "/etc/xen-tools/role.d/systemimager")


def say(request, line: str) -> None:
    """A line on the terminal now, whatever pytest captures (the timings are part of the result)."""
    with request.config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(line, flush=True)


@pytest.fixture(scope="module")
def scratch():
    require(os.geteuid() == 0, "needs root (chroots, mounts, dpkg)")
    need_tools("dpkg-buildpackage", "lintian", "debootstrap", "git", "chroot", "mount")
    d = Path(tempfile.mkdtemp(prefix="si-xen-pkgtest."))
    yield d
    remove_tree(d)  # refused if a chroot's mount is still there


@pytest.fixture(scope="module")
def deb(scratch, request) -> Path:
    t = time.monotonic()
    try:
        path = debpkg.build_deb(REPO, scratch / "out")
    except debpkg.BuildError as e:
        pytest.fail(str(e), pytrace=False)
    say(request, f"TIMING build {time.monotonic() - t:.1f} s ({path.name})")
    return path


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_package_is_lintian_clean(deb, request):
    from si_xen import __version__

    assert field(deb, "Version") == __version__, "debian/changelog and si_xen.__version__ disagree"
    assert field(deb, "Architecture") == "all"
    t = time.monotonic()
    cp = debpkg.lintian(deb)
    say(request, f"TIMING lintian {time.monotonic() - t:.1f} s")
    tags = [line for line in cp.stdout.splitlines() if line[:2] in ("E:", "W:", "I:", "P:", "X:", "O:", "M:", "N:")]
    say(request, "lintian: " + ("; ".join(tags) or "no tags"))
    assert cp.returncode == 0, f"lintian found errors or warnings:\n{cp.stdout}{cp.stderr}"


def tree_diff(before: set[str], after: set[str]) -> str:
    return "\n".join([f"+ {p}" for p in sorted(after - before)] + [f"- {p}" for p in sorted(before - after)])


def package_files(c: Chroot, prefix: str) -> list[str]:
    """The package's files (not its directories) under ``prefix``, as dpkg lists them."""
    return [p for p in c.run("dpkg", "-L", "si-xen").stdout.split()
            if p.startswith(prefix) and not c.path(p).is_dir()]


def check_commands(c: Chroot, version: str) -> None:
    out = c.run("si_mkxenvm", "--version").stdout.strip()
    assert out == f"si_mkxenvm (part of si-xen) v{version}", out
    for cmd in ("si_lsxenvm", "si_rmxenvm", "si_updatexenvm", "si_getxenimage", "si_xenhooks"):
        assert c.run("which", cmd).stdout.strip() == f"/usr/sbin/{cmd}"
        assert c.run(cmd, "--help").stdout.startswith(f"usage: {cmd}")
    c.run("si_lsxenvm")  # reads the (empty) state dir the package made


def check_man_pages(c: Chroot) -> None:
    pages = package_files(c, "/usr/share/man/")
    sections = [Path(p).name.removesuffix(".gz").rsplit(".", 1) for p in pages]
    assert {s for _, s in sections} == {"5", "7", "8"}, pages
    for name, section in sections:
        # man finds the page by name (its index, its path), groff renders it; warnings count
        cp = c.run("man", "--warnings", "-P", "cat", section, name, env={"MANWIDTH": "80"}, check=False)
        assert cp.returncode == 0 and cp.stderr == "", f"man {section} {name}: {cp.returncode}\n{cp.stderr}"
        lines = cp.stdout.splitlines()
        head = lines[0].split()  # the title line: NAME(SECTION) ... NAME(SECTION)
        assert head[0].lower() == head[-1].lower() == f"{name}({section})".lower(), lines[0]
        assert "NAME" in lines and any(line.startswith(("SYNOPSIS", "DESCRIPTION")) for line in lines), cp.stdout[:500]


def check_fixups_and_hooks(c: Chroot) -> None:
    hooks = sorted(Path(p).name for p in package_files(c, "/usr/share/si-xen/hooks/"))
    assert hooks, "no hooks in /usr/share/si-xen/hooks"
    listed = [line.split()[0] for line in c.run("si_xenhooks", "list").stdout.splitlines()]
    assert listed == hooks
    # a shipped hook finds si_xen in Debian's python3 and does its job on a guest root
    c.run("cp", "-a", f"{IMAGES}/tiny", "/tmp/guest")
    hook = next(h for h in hooks if h.endswith("-setup-hostname"))
    c.run(f"/usr/share/si-xen/hooks/{hook}", "/tmp/guest", env={"hostname": "hooked01"})
    assert c.path("/tmp/guest/etc/hostname").read_text() == "hooked01\n"


def check_ganeti_os(c: Chroot) -> None:
    """Ganeti's OS definition on Debian's search path, its variants the store's images (postinst),
    its scripts running with Debian's python3 (verify needs no instance)."""
    d = "/usr/share/ganeti/os/systemimager"
    assert sorted(Path(p).name for p in package_files(c, d + "/")) == sorted(
        ["create", "export", "import", "rename", "verify", "ganeti_api_version", "parameters.list", "variants.list"])
    for s in ("create", "export", "import", "rename", "verify"):
        assert os.access(c.path(f"{d}/{s}"), os.X_OK), s
    assert c.path(f"{d}/ganeti_api_version").read_text() == "20\n"
    # a link (dh_link) to what postinst wrote from the store; read inside: the link may be absolute
    assert c.run("cat", f"{d}/variants.list").stdout.splitlines()[1:] == ["tiny"]
    env = {"PATH": "/sbin:/bin:/usr/sbin:/usr/bin", "OS_API_VERSION": "20", "OS_VARIANT": "tiny"}
    c.run("sh", "-c", f"cd {d} && ./verify parameters", env=env)
    cp = c.run("sh", "-c", f"cd {d} && ./verify parameters", env={**env, "OSP_SWAP": "2"}, check=False)
    assert cp.returncode == 1 and "swap='2': must be one of yes, no" in cp.stderr, cp.stderr


def check_dry_run(c: Chroot) -> None:
    cp = c.run("si_mkxenvm", "tiny", "--hostname", "dry01", "--memory", "512M", "--size", "1G", "--dhcp",
               "--dir", "/srv/xen", "--output", "/root", "--dry-run")  # no /etc/xen: Xen is only Recommends
    # the plan: the image found in the store, its guest OS read, the disks laid out in --dir
    for want in (r"Hostname\s+: dry01$", rf"Image\s+: tiny \({IMAGES}/tiny\)$", r"Guest OS\s+: Debian GNU/Linux 12",
                 r"^xvda2\s+/\s+ext4\s+1G\s+/srv/xen/domains/dry01/disk\.img$", r"^Dry run: nothing was changed\.$"):
        assert re.search(want, cp.stdout, re.M), f"{want!r} not in the plan:\n{cp.stdout}"
    assert not c.path("/srv/xen").exists() and not c.path("/var/lib/si-xen/vms").exists()


def check_template(c: Chroot) -> None:
    """si-xen finds its templates (xl.cfg, and libvirt's domain XML) where the package put them, and
    Debian's jinja2 parses them."""
    cp = c.run("python3", "-c", "import jinja2; from si_xen import domain; "
               "env = jinja2.Environment(loader=jinja2.FileSystemLoader(domain.template_dirs(None))); "
               "print(env.get_template('xl.cfg.j2').filename); print(env.get_template('libvirt.xml.j2').filename)")
    assert cp.stdout.split() == ["/usr/share/si-xen/templates/xl.cfg.j2", "/usr/share/si-xen/templates/libvirt.xml.j2"]


def check_completion(c: Chroot) -> None:
    for cmd in ("si_mkxenvm", "si_lsxenvm", "si_rmxenvm", "si_updatexenvm", "si_getxenimage", "si_xenhooks"):
        cp = c.run("bash", "-c", f". /usr/share/bash-completion/bash_completion; _completion_loader {cmd}; "
                   f"complete -p {cmd}")
        assert cp.stdout.strip() == f"complete -F _si_xen {cmd}", cp.stdout
    # image names from the store, as bash would offer them after "si_mkxenvm "
    cp = c.run("bash", "-c", ". /usr/share/bash-completion/bash_completion; _completion_loader si_mkxenvm; "
               "COMP_WORDS=(si_mkxenvm t); COMP_CWORD=1; COMP_LINE='si_mkxenvm t'; COMP_POINT=12; "
               "_si_xen; echo \"${COMPREPLY[*]}\"")
    assert cp.stdout.split() == ["tiny"]


def check_xen_tools(c: Chroot, with_xen_tools: bool, deb: str) -> None:
    """The explicit integration: hooks that run from xen-tools' dirs, kept by an upgrade (here a
    reinstall: prerm upgrade, postinst configure), gone with the package (checked by the caller)."""
    assert (c.run("sh", "-c", "command -v xen-create-image", check=False).returncode == 0) == with_xen_tools
    c.run("si_xenhooks", "install-xen-tools")
    manifest = c.path("/var/lib/si-xen/xen-tools.manifest")
    written = manifest.stat().st_mtime_ns
    time.sleep(0.01)
    cp = c.run("apt-get", "install", "-y", "-q", "--reinstall", deb)
    assert manifest.stat().st_mtime_ns > written and "WARNING" not in cp.stderr, "postinst did not refresh the hooks"
    installed = sorted(p.name for p in c.path(XEN_TOOLS_HOOKS[0]).iterdir())
    assert installed == sorted(Path(p).name for p in package_files(c, "/usr/share/si-xen/hooks/"))
    assert c.path(XEN_TOOLS_HOOKS[1]).is_file()
    hook = next(h for h in installed if h.endswith("-setup-hostname"))
    c.run("rm", "-rf", "/tmp/guest2")
    c.run("cp", "-a", f"{IMAGES}/tiny", "/tmp/guest2")
    c.run(f"{XEN_TOOLS_HOOKS[0]}/{hook}", "/tmp/guest2", env={"hostname": "xentools01"})
    assert c.path("/tmp/guest2/etc/hostname").read_text() == "xentools01\n"


@pytest.mark.parametrize("suite", SUITES)
def test_installs_works_and_purges_clean(suite, deb, scratch, request):
    t0 = time.monotonic()
    version = field(deb, "Version")
    with Chroot(suite, scratch) as c:
        (c.root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")  # no daemons in a chroot
        (c.root / "usr/sbin/policy-rc.d").chmod(0o755)
        c.run("apt-get", "update", "-q")
        # What the checks need, and xen-tools (Suggests) to check the integration with it.
        c.run("apt-get", "install", "-y", "-q", "--no-install-recommends", "man-db", "bash-completion",
              *(["xen-tools"] if suite in WITH_XEN_TOOLS else []))
        # piuparts' order: the dependencies from the archive first, then the file list.
        c.run("apt-get", "satisfy", "-y", "-q", "--no-install-recommends", field(deb, "Depends"))
        fakeimage.make(c.path(f"{IMAGES}/tiny"))
        before = c.files()
        shutil.copy(deb, c.path(f"/tmp/{deb.name}"))
        t1 = time.monotonic()
        cp = c.run("apt-get", "install", "-y", "-q", "--no-install-recommends", f"/tmp/{deb.name}")
        assert "NEW packages" in cp.stdout and " 1 newly installed" in cp.stdout, cp.stdout  # no dependency was missing
        assert c.path("/var/lib/si-xen").is_dir() and c.path("/var/log/si-xen").is_dir()
        check_commands(c, version)
        check_man_pages(c)
        check_fixups_and_hooks(c)
        check_ganeti_os(c)
        check_dry_run(c)
        check_template(c)
        check_completion(c)
        check_xen_tools(c, suite in WITH_XEN_TOOLS, f"/tmp/{deb.name}")
        c.run("apt-get", "remove", "-y", "-q", "si-xen")
        left = [p for p in XEN_TOOLS_HOOKS if c.path(p).exists()]
        assert not left, f"package removal left the xen-tools integration: {left}"
        assert c.path("/var/lib/si-xen").is_dir(), "state removed before purge"
        c.run("apt-get", "purge", "-y", "-q", "si-xen")
        status = c.run("dpkg-query", "-W", "-f", "${db:Status-Status}", "si-xen", check=False).stdout
        assert status in ("", "not-installed"), status
        c.run("rm", "-rf", "/tmp/guest", "/tmp/guest2")
        diff = tree_diff(before, c.files())
        t2 = time.monotonic()
    say(request, f"TIMING chroot {suite} {time.monotonic() - t0:.1f} s (setup {t1 - t0:.1f} s, "
                 f"install..purge {t2 - t1:.1f} s)")
    assert not diff, f"install + purge changed the file list of the {suite} chroot:\n{diff}"
