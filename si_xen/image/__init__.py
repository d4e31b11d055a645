"""The source: a SystemImager image, found, identified and read (never written)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

from ..distros import OSInfo, detect
from ..errors import Fatal
from ..guestfs import Guest, GuestPathError
from .metadata import META_DIR, Metadata, read_metadata
from .store import StoreConfig, list_images, resolve, store_config


@dataclass(frozen=True)
class Image:
    name: str
    path: str
    os: OSInfo
    meta: Metadata
    layout_from: str = ""  # the layout file meta.filesystems came from, as the plan names it

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
    return open_at(name, path, lambda: local_layout(cfg, name))


def open_at(name: str, path: str, layout=None, where: str = "") -> Image:
    """The image ``name`` whose tree is at ``path``. ``layout()`` gives the text of the image
    server's scripts/disks-layouts/IMAGE.xml (``where`` names it), or None: as SystemImager's
    installer (si_mkautoinstallscript) reads it, that copy wins over the image's own file."""
    with reading(name, path):
        meta = read_metadata(path)
        used = f"{META_DIR}/{meta.layout_file} (the image's own)" if meta.layout_file else ""
        if layout and (text := layout()):
            used = where or f"scripts/disks-layouts/{name}.xml"
            meta = Metadata(meta.retrieval_time, meta.retrieved_from, used, text)  # parsed when used
        return Image(name, path, detect(Guest(path)), meta, used)


def local_layout(cfg: StoreConfig, name: str) -> str | None:
    """si_getimage's copy of the layout, layout_path(): its text."""
    try:
        with open(layout_path(cfg, name), encoding="utf-8", errors="replace") as f:  # a bad byte: the parser names its line
            return f.read()
    except OSError:
        return None


def layout_path(cfg: StoreConfig, name: str) -> str:
    return os.path.join(cfg.scripts_dir, "disks-layouts", f"{name}.xml")


__all__ = ["Image", "open_image", "open_at", "reading", "list_images", "store_config", "resolve"]
