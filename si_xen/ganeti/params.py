"""The OS parameters (``-O name=value``, OSP_NAME in the scripts' environment): one table
that parameters.list, ``verify parameters`` and si-xen-ganeti(7) are all made from."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from ..plan import FILESYSTEMS

_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.+-]*$")


def _image(v: str) -> str | None:
    return None if _NAME.match(v) else "an image name: letters, digits and ._+- (si_lsimage lists them)"


def _server(v: str) -> str | None:
    from ..errors import Fatal
    from ..image.remote import parse_server

    try:
        parse_server(v)
    except Fatal as e:
        return str(e)
    return None


def _names(v: str) -> str | None:
    bad = [n for n in split(v) if not _NAME.match(n)]
    return f"override names, comma or space separated (not {', '.join(bad)})" if bad else None


def _user(v: str) -> str | None:
    return None if re.fullmatch(r"[a-z_][a-z0-9_-]*", v) else "a user name"


def _choice(*allowed: str) -> Callable[[str], str | None]:
    return lambda v: None if v in allowed else f"one of {', '.join(allowed)}"


def _nameservers(v: str) -> str | None:
    import ipaddress

    try:
        for n in split(v):
            ipaddress.IPv4Address(n)
    except ValueError:
        return "IPv4 addresses, comma or space separated"
    return None


def _fixups(v: str) -> str | None:
    from ..fixups import FIXUPS

    known = {f.name for f in FIXUPS} | {f.hook for f in FIXUPS}
    bad = [n for n in split(v) if n not in known]
    return f"fixup names from si_xenhooks list (not {', '.join(bad)})" if bad else None


def split(value: str) -> list[str]:
    return [w for w in re.split(r"[,\s]+", value) if w]


@dataclass(frozen=True)
class Param:
    name: str
    summary: str  # one line: parameters.list
    check: Callable[[str], str | None]  # the problem with a value (what it must be), or None
    default: str = ""


PARAMS = (
    Param("image", "SystemImager image to install when the OS name carries no variant (systemimager+IMAGE)", _image),
    Param("server", "HOST[:PORT] of a SystemImager image server to pull the image from (default: this node's images)",
          _server),
    Param("ssh_user", "reach the image server's rsync daemon through an ssh tunnel as this user", _user),
    Param("overrides", "SystemImager overrides laid over the image in order, comma separated "
          "(the server's, else /var/lib/systemimager/overrides/NAME)", _names),
    Param("filesystem", f"root filesystem on disk 0: {', '.join(FILESYSTEMS)}", _choice(*FILESYSTEMS), "ext4"),
    Param("swap", "yes: the instance's last disk (of two or more) becomes its swap; no: it is left alone",
          _choice("yes", "no"), "yes"),
    Param("nameservers", "DNS servers for a static address, comma separated", _nameservers),
    Param("skip_fixups", "guest fixups not to run, comma separated (si_xenhooks list)", _fixups),
    Param("identity", "keep: gnt-instance reinstall keeps the instance's SSH host keys and machine-id (from disk 0); "
          "fresh: it gets new ones", _choice("keep", "fresh"), "keep"),
)
BY_NAME = {p.name: p for p in PARAMS}


def parameters_list() -> str:
    """The OS definition's parameters.list: ``name description`` per line."""
    return "".join(f"{p.name} {p.summary}\n" for p in PARAMS)


def problems(osp: dict[str, str]) -> list[str]:
    """What is wrong with the given OS parameters, one sentence each (for ``verify``)."""
    out = []
    for name, value in sorted(osp.items()):
        p = BY_NAME.get(name)
        if p is None:
            out.append(f"unknown OS parameter '{name}': use one of {', '.join(BY_NAME)}")
        elif value and (why := p.check(value)):
            out.append(f"invalid OS parameter {name}='{value}': must be {why}")
    return out


def value(osp: dict[str, str], name: str) -> str:
    return osp.get(name) or BY_NAME[name].default
