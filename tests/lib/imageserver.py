"""A SystemImager image server's rsync daemon config, as si_mkrsyncd_conf writes it: the
10header (global settings and the [boot] [overrides] [scripts] [torrents] modules), then one
40IMAGE stub per image. Used by the integration tier's daemon on 127.0.0.1 and by the Xen
tier, whose dom0 reaches the daemon over QEMU's user network."""

from __future__ import annotations

import os


def write_rsyncd_conf(root: str, images: dict[str, str]) -> str:
    """rsyncd.conf under ``root`` serving ``images`` (name -> tree) beside root's boot,
    overrides, scripts and torrents dirs (made here); its path."""
    for d in ("boot", "overrides", "scripts", "torrents"):
        os.makedirs(f"{root}/{d}", exist_ok=True)
    conf = f"{root}/rsyncd.conf"
    with open(conf, "w") as f:
        f.write("list = yes\ntimeout = 600\ndont compress = *.gz *.tgz *.zip *.Z *.ZIP *.bz2 *.deb *.rpm *.dbf\n"
                f"uid = root\ngid = root\nuse chroot = yes\nlog file = {root}/rsyncd.log\n"
                f"[boot]\npath = {root}/boot\nhosts allow = 0.0.0.0/0\n[overrides]\npath = {root}/overrides\n"
                f"[scripts]\npath = {root}/scripts\n[torrents]\npath = {root}/torrents\n"
                + "".join(f"[{name}]\n\tpath={path}\n\n" for name, path in images.items()))
    return conf
