"""The domain config: jinja2 templates rendered to xl.cfg text (the deploy writes it with atomic.write),
and for ``--toolstack libvirt`` the same VM as libvirt domain XML (LIBVIRT_TEMPLATE), from the same data.

A template in the admin's template dir (/etc/systemimager/xen/) overrides ours, as
/etc/xen-tools/xm.tmpl does for xen-tools.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import threading
import time
import uuid

from . import __version__
from .boot import PVGRUB2
from .errors import Fatal
from .plan import Plan

_HERE = os.path.dirname(os.path.abspath(__file__))
SEARCH = (
    # where pip put the wheel's data files (Debian's pip: /usr/local), then distro packages
    os.path.join(sysconfig.get_paths()["data"], "share", "si-xen", "templates"),
    os.path.join(sys.prefix, "share", "si-xen", "templates"),
    "/usr/share/si-xen/templates",
    os.path.join(os.path.dirname(_HERE), "etc", "templates"),  # a source checkout
)


LIBVIRT_TEMPLATE = "libvirt.xml.j2"
_UUIDS = uuid.UUID("5b7e1d0c-3c1e-4c8e-9f35-5a1f0e2d7c11")  # si-xen's namespace for its domains' uuids


def domain_uuid(plan: Plan) -> str:
    """The libvirt domain's uuid: the same for the same name and MAC (a --force or a rebuild
    redefines the domain libvirt knows; a fresh uuid for the same name is refused)."""
    return uuid_of(plan.hostname, plan.net.mac)


def uuid_of(name: str, mac: str) -> str:
    return str(uuid.uuid5(_UUIDS, f"{name} {mac}"))


def template_dirs(user_dir: str | None) -> list[str]:
    return [d for d in ([user_dir] if user_dir else []) + list(SEARCH) if os.path.isdir(d)]


_loaded: dict[tuple[str | None, str], object] = {}
_loading = threading.Lock()


def load(user_dir: str | None, template: str = "xl.cfg.j2"):
    """The compiled template. Importing jinja2 and compiling take ~40 ms, so a deploy calls
    this beside its first steps (deploy.execute) and the config step finds it done."""
    with _loading:
        if (user_dir, template) not in _loaded:
            import jinja2  # for the config step only (a Ganeti install writes no config)

            env = jinja2.Environment(
                loader=jinja2.FileSystemLoader(template_dirs(user_dir)),
                undefined=jinja2.StrictUndefined,
                keep_trailing_newline=True,
                autoescape=False,
            )
            try:
                _loaded[(user_dir, template)] = env.get_template(template)
            except jinja2.TemplateNotFound:
                raise Fatal(f"template {template} not found in {', '.join(SEARCH)}", "reinstall si-xen") from None
        return _loaded[(user_dir, template)]


def render(plan: Plan, *, kernel: str | None, ramdisk: str | None, cmdline: str, user_dir: str | None = None,
           template: str = "xl.cfg.j2", created: str | None = None) -> str:
    import jinja2

    tmpl = load(user_dir, template)
    # The root disk first: pygrub boots from the first disk of the list.
    disks = sorted(plan.disks, key=lambda d: (d.mountpoint != "/", d.vdev))
    try:
        return tmpl.render(
            plan=plan, disks=disks, kernel=kernel, ramdisk=ramdisk, cmdline=cmdline,
            pvgrub=PVGRUB2[plan.type], version=__version__, uuid=domain_uuid(plan),
            created=created or time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        )
    except jinja2.TemplateError as e:
        raise Fatal(f"template {template} failed: {e}", "fix the template in /etc/systemimager/xen/") from None
