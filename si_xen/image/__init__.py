"""The source: a SystemImager image, found, identified and read (never written)."""

from __future__ import annotations

from dataclasses import dataclass

from ..distros import OSInfo, detect
from ..guestfs import Guest
from .metadata import Metadata, read_metadata
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


def open_image(name: str, cfg: StoreConfig | None = None) -> Image:
    name, path = resolve(name, cfg)
    return Image(name, path, detect(Guest(path)), read_metadata(path))


__all__ = ["Image", "open_image", "list_images", "store_config", "resolve"]
