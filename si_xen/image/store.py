"""The SystemImager image store: where images live and how a name resolves (read-only)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

from ..errors import Fatal

DEFAULT_IMAGES_DIR = "/var/lib/systemimager/images"
DEFAULT_STUB_DIR = "/etc/systemimager/rsync_stubs"
DEFAULT_SCRIPTS_DIR = "/var/lib/systemimager/scripts"
DEFAULT_OVERRIDES_DIR = "/var/lib/systemimager/overrides"
# Plain warning files SystemImager keeps beside the images.
NOT_IMAGES = {"README", "ACHTUNG", "ATTENTION", "CUIDADO"}
_PATH_RE = re.compile(r"^\s*path\s*=\s*(\S+)\s*$")
# no leading dot: hidden entries are work in progress (si_getxenimage's .IMAGE.si-xen-new-PID)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@dataclass(frozen=True)
class StoreConfig:
    images_dir: str
    stub_dir: str
    source: str  # which file said so, for messages
    scripts_dir: str = DEFAULT_SCRIPTS_DIR
    overrides_dir: str = DEFAULT_OVERRIDES_DIR


def _read_conf_keys(path: str) -> dict[str, str]:
    """systemimager.conf: ``KEY = value`` lines, keys case-insensitive, ``#`` comments."""
    keys: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if "=" in line:
                k, v = line.split("=", 1)
                keys[k.strip().upper()] = v.strip()
    return keys


def store_config(confdir: str | None = None) -> StoreConfig:
    """SIS_CONFDIR -> systemimager.json -> systemimager.conf -> built-in defaults."""
    confdir = confdir or os.environ.get("SIS_CONFDIR") or "/etc/systemimager"
    jpath = os.path.join(confdir, "systemimager.json")
    cpath = os.path.join(confdir, "systemimager.conf")
    if os.path.isfile(jpath):
        try:
            with open(jpath, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise Fatal(f"cannot read {jpath}: {e}", "fix the JSON or remove the file") from None
        imager = data.get("imager", {}) if isinstance(data, dict) else {}
        xmit = data.get("xmit_rsync", {}) if isinstance(data, dict) else {}
        return StoreConfig(
            imager.get("images_dir", DEFAULT_IMAGES_DIR), xmit.get("stubs_dir", DEFAULT_STUB_DIR), jpath,
            imager.get("scripts_dir", DEFAULT_SCRIPTS_DIR), imager.get("overrides_dir", DEFAULT_OVERRIDES_DIR),
        )
    if os.path.isfile(cpath):
        keys = _read_conf_keys(cpath)
        return StoreConfig(
            keys.get("DEFAULT_IMAGE_DIR", DEFAULT_IMAGES_DIR), keys.get("RSYNC_STUB_DIR", DEFAULT_STUB_DIR), cpath,
            keys.get("AUTOINSTALL_SCRIPT_DIR", DEFAULT_SCRIPTS_DIR), keys.get("DEFAULT_OVERRIDE_DIR", DEFAULT_OVERRIDES_DIR),
        )
    return StoreConfig(DEFAULT_IMAGES_DIR, DEFAULT_STUB_DIR, "built-in default")


def stub_path(cfg: StoreConfig, name: str) -> str | None:
    """The image path named by the rsync stub ``40NAME`` (SystemImager's registry), if any."""
    stub = os.path.join(cfg.stub_dir, "40" + name)
    try:
        with open(stub, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _PATH_RE.match(line)
                if m:
                    return m.group(1)
    except OSError:
        pass
    return None


def resolve(name: str, cfg: StoreConfig | None = None) -> tuple[str, str]:
    """Return (image name, image path) for a name (stub first, then IMAGES_DIR/NAME) or a path."""
    cfg = cfg or store_config()
    if "/" in name:
        path = os.path.abspath(name)
        name = os.path.basename(path.rstrip("/"))
    else:
        if not _NAME_RE.match(name) or name in NOT_IMAGES:
            raise Fatal(f"invalid image name '{name}'", "try si_lsimage or si_lsxenvm --images for the names")
        path = stub_path(cfg, name) or os.path.join(cfg.images_dir, name)
    if not os.path.isdir(path):
        raise Fatal(f"image '{name}' not found in {cfg.images_dir}", "try si_lsimage to list the images")
    if not os.path.isdir(os.path.join(path, "etc")):
        raise Fatal(f"image '{name}' at {path} is not a root tree (no etc/)", "check the image with si_lsimage")
    return name, path


def list_images(cfg: StoreConfig | None = None) -> list[tuple[str, str]]:
    """(name, path) of every image: stubs first, then directories in IMAGES_DIR."""
    cfg = cfg or store_config()
    found: dict[str, str] = {}
    try:
        stubs = sorted(os.listdir(cfg.stub_dir))
    except OSError:
        stubs = []
    for s in stubs:
        if s.startswith("40") and not s.endswith(("~", ".bak")):
            p = stub_path(cfg, s[2:])
            if p and os.path.isdir(p):
                found[s[2:]] = p
    try:
        entries = sorted(os.listdir(cfg.images_dir))
    except OSError:
        entries = []
    for e in entries:
        p = os.path.join(cfg.images_dir, e)
        if _NAME_RE.match(e) and e not in NOT_IMAGES and e not in found and os.path.isdir(os.path.join(p, "etc")):
            found[e] = p
    return sorted(found.items())
