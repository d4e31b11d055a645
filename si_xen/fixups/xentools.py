"""xen-tools adapter: its hook environment read into a GuestSpec, the hook and role
executables' source (they call fixups.hooks), and installing them as the ``systemimager`` dist.

``xen-create-image --dist=systemimager --install-method=copy`` then runs our fixups from
/usr/share/xen-tools/systemimager.d/ (xen-tools.md §1.2, §2.4); the role script
/etc/xen-tools/role.d/systemimager runs them all for any other --dist.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping

from si_xen import atomic
from si_xen.config import BUILTIN
from si_xen.errors import Fatal
from si_xen.fixups import FIXUPS
from si_xen.fixups.spec import GuestSpec, Partition
from si_xen.validate import ENV, check_hostname, check_network

DIST = "systemimager"
HOOK_DIR = f"usr/share/xen-tools/{DIST}.d"
ROLE = f"etc/xen-tools/role.d/{DIST}"
MANIFEST = "var/lib/si-xen/xen-tools.manifest"
MARK = "# si-xen generated"


def _bad(var: str, value: str, fix: str) -> Fatal:
    return Fatal(f"invalid value '{value}' in environment variable {var}", fix)


def _ips(g) -> list[str]:
    count = g("ip_count")
    names = [f"ip{i}" for i in range(1, max(int(count) if count.isdigit() else 0, 1) + 1)]
    if not count:  # tolerate a missing ip_count: take ip1.. while present
        while g(f"ip{len(names) + 1}"):
            names.append(f"ip{len(names) + 1}")
    return [g(k) for k in names if g(k)]


def _partitions(g) -> tuple[Partition, ...]:
    raw = g("NUMPARTITIONS")
    if raw and not raw.isdigit():
        raise _bad("NUMPARTITIONS", raw, "expected a count")
    out = []
    for n in range(1, int(raw or 0) + 1):
        spec = g(f"PARTITION{n}")
        fields = spec.split(":", 6)
        if len(fields) < 4:
            raise _bad(f"PARTITION{n}", spec, "expected name:size:type:mountpoint:options:imagetype:image")
        name, size, fstype, mnt = fields[:4]
        opts, kind, target = (fields[4:] + ["", "", ""])[:3]
        if fstype != "swap" and not mnt.startswith("/") or re.search(r"\s", mnt + opts + fstype):
            raise _bad(f"PARTITION{n}", spec, "a non-swap partition needs an absolute mountpoint, no spaces")
        out.append(Partition(n, name, size, fstype, mnt, opts, kind, target))
    return tuple(out)


def spec_from_env(env: Mapping[str, str]) -> GuestSpec:
    """The guest spec in xen-tools' hook environment (xen-tools.md §1.4); Fatal names a bad variable.

    Optional variables may be missing: xen-create-image exports only what is defined.
    """
    def g(k: str) -> str:
        v = env.get(k)
        return v.strip() if isinstance(v, str) else ""

    hostname = g("hostname")
    if hostname:
        check_hostname(hostname, ENV.label("hostname"))
    dhcp = g("dhcp")
    if dhcp not in ("", "0", "1"):
        raise _bad("dhcp", dhcp, "use 1 for DHCP, 0 for static")
    ips = _ips(g)
    net = check_network(dhcp == "1" or (dhcp == "" and not ips), ips, g("netmask"), g("gateway"),
                        g("broadcast"), g("nameserver"), g("mac"), g("bridge") or BUILTIN["bridge"], ENV)
    disk = os.path.basename(g("disk_device") or "xvda")
    if g("ide") == "1":
        disk = "hda"
    elif g("scsi") == "1":
        disk = "sda"
    if not re.fullmatch(r"[a-z]+", disk):
        raise _bad("disk_device", disk, "expected a whole-disk name such as xvda")
    serial = (g("serial_device") or "hvc0").removeprefix("/dev/")
    if not re.fullmatch(r"(tty|hvc|xvc)[A-Za-z]*[0-9]+", serial):
        raise _bad("serial_device", serial, "expected e.g. hvc0")
    return GuestSpec(hostname=hostname, net=net, disk=disk, serial=serial, partitions=_partitions(g),
                     image_source=g("install_source"), image=g("image_name"), pygrub=g("pygrub") == "1", kernel=g("kernel"),
                     initrd=g("initrd"), modules=g("modules"))


# Hooks run from a source checkout find si_xen beside hooks/; installed ones get the path
# of the package that installed them (its interpreter may not have it on sys.path).
_FIND = """import os
import sys

sys.path.insert(0, {path})
"""


def _pkg_parent() -> str:
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hook_text(fx, python: str = "/usr/bin/env python3", pkg_path: str | None = None) -> str:
    """The source of one hook executable (checked in under hooks/, or installed)."""
    where = repr(pkg_path) if pkg_path else "os.path.join(os.path.dirname(os.path.realpath(__file__)), '..')"
    return (f"#!{python}\n{MARK}: xen-tools hook, runs one si-xen fixup. $1 = guest root.\n"
            f'"""{fx.hook}: {fx.summary}"""\n' + _FIND.format(path=where) +
            "from si_xen.fixups.hooks import hook_main  # noqa: E402\n\n"
            f"sys.exit(hook_main({fx.name!r}))\n")


def role_text(python: str, pkg_path: str) -> str:
    return (f"#!{python}\n{MARK}: xen-tools role, runs every si-xen fixup. $1 = guest root.\n"
            '"""Role script: all si-xen guest fixups, for xen-create-image --role=systemimager."""\n'
            + _FIND.format(path=repr(pkg_path)) +
            "from si_xen.fixups.hooks import role_main  # noqa: E402\n\nsys.exit(role_main())\n")


def _root_path(root: str, rel: str) -> str:
    return os.path.join(root or "/", rel)


def _check_ours(path: str, force: bool) -> None:
    if os.path.lexists(path) and not force:
        with open(path, errors="replace") as f:
            if MARK not in f.read(4096):
                raise Fatal(f"{path} exists and was not written by si-xen", "remove it or use --force")


def _write(path: str, text: str, written: list[str], force: bool) -> None:
    atomic.write(path, text, 0o755)
    written.append(path)


def install(root: str = "/", force: bool = False, log=print) -> list[str]:
    """Install the hook set and the role script under ``root``; return the paths written."""
    python, pkg = sys.executable, _pkg_parent()
    targets = [_root_path(root, f"{HOOK_DIR}/{fx.hook}") for fx in FIXUPS] + [_root_path(root, ROLE)]
    for path in targets:  # refuse before writing anything: no half installation
        _check_ours(path, force)
    made_dirs, written = [], []
    for d in (HOOK_DIR, os.path.dirname(ROLE), os.path.dirname(MANIFEST)):
        path = _root_path(root, d)
        missing = []
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for m in reversed(missing):
            os.mkdir(m, 0o755)
            made_dirs.append(m)
    hook_dir = _root_path(root, HOOK_DIR)
    old = _manifest(root)
    for fx in FIXUPS:
        _write(os.path.join(hook_dir, fx.hook), hook_text(fx, python, pkg), written, force)
    _write(_root_path(root, ROLE), role_text(python, pkg), written, force)
    # a previous install's hooks that no longer exist (renamed fixups) go
    for path in set(old.get("files", [])) - set(written):
        if os.path.lexists(path):
            os.unlink(path)
    dirs = [d for d in old.get("dirs", []) if d not in made_dirs] + made_dirs
    atomic.write(_root_path(root, MANIFEST), json.dumps({"files": written, "dirs": dirs}, indent=1))
    for p in written:
        log(f"installed {p}")
    return written


def _manifest(root: str) -> dict:
    try:
        with open(_root_path(root, MANIFEST)) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return {}


def uninstall(root: str = "/", log=print) -> list[str]:
    """Remove exactly what :func:`install` wrote (files, then the dirs it created if empty)."""
    man = _manifest(root)
    if not man:
        raise Fatal(f"no si-xen xen-tools installation recorded in {_root_path(root, MANIFEST)}",
                    "nothing to uninstall")
    removed = []
    for path in man.get("files", []):
        if os.path.lexists(path):
            os.unlink(path)
            removed.append(path)
            log(f"removed {path}")
    os.unlink(_root_path(root, MANIFEST))
    for d in sorted(man.get("dirs", []), key=len, reverse=True):
        try:
            os.rmdir(d)
        except OSError:
            pass  # not empty: something else lives there now
    return removed
