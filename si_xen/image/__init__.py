"""The source: a SystemImager image, found, identified and read (never written)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from ..distros import OSInfo, detect
from ..errors import Fatal
from ..guestfs import Guest, GuestPathError
from .metadata import Metadata, parse_layout, read_metadata
from .store import StoreConfig, list_images, resolve, store_config


@dataclass(frozen=True)
class Image:
    name: str
    path: str
    os: OSInfo
    meta: Metadata

    @property
    def guest(self) -> Guest:
        return Guest(self.path)

    def reading(self):
        return reading(self.name, self.path)


@contextmanager
def reading(name: str, path: str):
    """Around every read of an image (untrusted input): a link loop, an unreadable file or a
    directory where a file should be becomes one FATAL naming the image and the guest path."""
    try:
        yield
    except GuestPathError as e:
        raise Fatal(f"image '{name}' is unusable: {e.gpath}: {e.reason}", f"fix or remove it in {path}") from None
    except OSError as e:
        host = os.fsdecode(e.filename or "")
        root = os.path.realpath(path)
        shown = "/" + os.path.relpath(host, root) if host.startswith(root + "/") else host or "a file"
        raise Fatal(f"image '{name}' is unusable: cannot read {shown}: {e.strerror}",
                    f"fix it in {path}, or get the image again") from None


def open_image(name: str, cfg: StoreConfig | None = None) -> Image:
    cfg = cfg or store_config()
    name, path = resolve(name, cfg)
    return open_at(name, path, lambda: _local_layout(cfg, name))


def open_with_overrides(name: str, overrides: list[str], paths: dict[str, str], say) -> Image:
    """The local image with SystemImager's overrides (DEFAULT_OVERRIDE_DIR/NAME) laid over it
    in order, as a view in si-xen's cache (views.Local); ``say`` gets one line per override."""
    from .views import Local

    cfg = store_config()
    name, path = resolve(name, cfg)
    view, done = Local(paths["cache_dir"], paths["lock_dir"], name, path, cfg.overrides_dir).view(overrides, cfg.source)
    for o, n in zip(overrides, done, strict=False):
        say(f"Override '{o}' (from {cfg.overrides_dir}): {n} files copied over image '{name}'")
    return open_at(name, view, lambda: _local_layout(cfg, name))


def open_at(name: str, path: str, layout=None) -> Image:
    """The image ``name`` whose tree is at ``path``; ``layout()`` gives the text of a
    disks-layout.xml to use when the image carries no layout of its own."""
    with reading(name, path):
        meta = read_metadata(path)
        if not meta.layout_file and layout and (text := layout()):
            meta = Metadata(meta.retrieval_time, meta.retrieved_from, f"disks-layouts/{name}.xml",
                            parse_layout(text, f"disks-layouts/{name}.xml"))
        return Image(name, path, detect(Guest(path)), meta)


def _local_layout(cfg: StoreConfig, name: str) -> str | None:
    """si_getimage's copy of the layout: SCRIPTS_DIR/disks-layouts/IMAGE.xml."""
    try:
        with open(os.path.join(cfg.scripts_dir, "disks-layouts", f"{name}.xml"), encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


__all__ = ["Image", "open_image", "open_at", "reading", "list_images", "store_config", "resolve"]
