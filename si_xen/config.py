"""/etc/systemimager/xen.conf: defaults for every option, per-image sections, paths.

INI with ExtendedInterpolation, e.g.::

    [defaults]
    memory = 512M
    dir = /srv/xen
    [image:centos5]
    boot = pygrub
    [paths]
    state_dir = /var/lib/si-xen
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass

from . import initramfs
from .errors import Fatal

DEFAULT_CONFIG = "/etc/systemimager/xen.conf"

# Built-in defaults (the lowest layer): what xen-create-image's shipped xen-tools.conf says
# where it fits, except memory, which a modern guest needs more of.
BUILTIN = {
    "memory": "512M",
    "vcpus": "1",
    "size": "4G",
    "swap": "256M",
    "fs": "ext4",
    "type": "pv",
    "boot": "direct",
    "bridge": "xenbr0",
    "output": "/etc/xen",
    "extension": ".cfg",
    "toolstack": "auto",
    "layout": "default",
    "cloud_init": "auto",
    "initramfs": "auto",
}
PATHS = {
    "state_dir": "/var/lib/si-xen",
    "log_dir": "/var/log/si-xen",
    "lock_dir": "/run/lock/si-xen",
    "template_dir": "/etc/systemimager/xen",
    "cache_dir": "/var/cache/si-xen",  # images pulled from image servers: images/SERVER/IMAGE/
}
KNOWN = set(BUILTIN) | {
    "maxmem", "noswap", "dir", "lvm", "dhcp", "ip", "netmask", "gateway", "broadcast",
    "nameserver", "mac", "kernel", "initrd", "autostart", "start", "fixups", "skip_fixups", "full_copy", "thin_pool",
    "server", "ssh_user", "override", "user_data",
}  # fmt: skip


@dataclass(frozen=True)
class Settings:
    options: dict[str, str]  # merged defaults for the image at hand
    paths: dict[str, str]
    source: str


def load(path: str | None = None, image: str | None = None) -> Settings:
    explicit = path is not None
    path = path or os.environ.get("SI_XEN_CONFIG") or DEFAULT_CONFIG
    cp = configparser.ConfigParser(interpolation=configparser.ExtendedInterpolation())
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                cp.read_file(f)
        except (configparser.Error, OSError) as e:
            first = str(e).splitlines()[0]
            raise Fatal(f"cannot read config {path}: {first}", "fix the file (see si-xen.conf(5))") from None
    elif explicit:
        raise Fatal(f"config file {path} not found", "give an existing file to --config")
    options = dict(BUILTIN)
    paths = dict(PATHS)
    try:
        sections = ["defaults"] + ([f"image:{image}"] if image else [])
        for sec in sections:
            if cp.has_section(sec):
                for k, v in cp.items(sec):
                    key = k.replace("-", "_")
                    if key not in KNOWN:
                        raise Fatal(f"unknown key '{k}' in [{sec}] of {path}", "see si-xen.conf(5) for the keys")
                    options[key] = v
        if cp.has_section("paths"):
            for k, v in cp.items("paths"):
                if k not in PATHS:
                    raise Fatal(f"unknown key '{k}' in [paths] of {path}", "see si-xen.conf(5) for the keys")
                paths[k] = v
    except configparser.InterpolationError as e:
        raise Fatal(f"bad interpolation in {path}: {e.message}", "fix the ${...} reference") from None
    initramfs.use_cache_root(paths["cache_dir"])  # read deep in planning, where no settings reach
    return Settings(options, paths, path)
