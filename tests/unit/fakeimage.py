"""A tiny but complete image tree: os-release, a kernel and a real gzip'd initramfs."""

from __future__ import annotations

import gzip
import os
import struct


def newc(name: str, data: bytes, mode: int = 0o100644) -> bytes:
    """One newc cpio member (what the kernel unpacks)."""
    nb = name.encode() + b"\0"
    hdr = b"070701" + b"".join(b"%08X" % v for v in (0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nb), 0))
    out = hdr + nb
    out += b"\0" * (-len(out) % 4) + data
    return out + b"\0" * (-len(out) % 4)


def cpio(files: dict[str, bytes]) -> bytes:
    body = b"".join(newc(n, d) for n, d in files.items()) + newc("TRAILER!!!", b"", 0)
    return body + b"\0" * (-len(body) % 512)


def bzimage(size: int = 2 * 2**20) -> bytes:
    """A file with the x86 boot header of a bzImage of ``size`` bytes (boot protocol 2.15)."""
    setup = 40 * 512
    body = size - setup
    head = bytearray(os.urandom(setup))
    head[0x1F1] = 39
    struct.pack_into("<I", head, 0x1F4, body // 16)
    head[0x202:0x208] = b"HdrS" + struct.pack("<H", 0x020F)
    struct.pack_into("<II", head, 0x248, 716, body - 716 - 4)
    return bytes(head) + b"\xfd7zXZ\0" + os.urandom(body - 6)


def make(root, *, unpacked_mib: int = 8, microcode: bool = True, os_release: str | None = None) -> str:
    """Build the tree under ``root``; the initramfs unpacks to about ``unpacked_mib`` MiB."""
    root = str(root)
    for d in ("etc/systemimager", "boot", "bin", "var/log", "proc/1", "tmp"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    with open(os.path.join(root, "etc/os-release"), "w") as f:
        f.write(os_release or 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\n'
                'VERSION_ID="12"\nID=debian\n')
    with open(os.path.join(root, "etc/hostname"), "w") as f:
        f.write("golden01\n")
    with open(os.path.join(root, "bin/ls"), "wb") as f:
        f.write(os.urandom(200_000))
    with open(os.path.join(root, "proc/1/status"), "w") as f:
        f.write("not copied\n")
    v = "6.1.0-99-amd64"
    with open(os.path.join(root, f"boot/vmlinuz-{v}"), "wb") as f:
        f.write(bzimage())
    early = cpio({"kernel/x86/microcode/AuthenticAMD.bin": b"u" * 1000}) if microcode else b""
    main = gzip.compress(cpio({"init": b"#!/bin/sh\n", "big": b"\0" * (unpacked_mib * 2**20)}), 1)
    with open(os.path.join(root, f"boot/initrd.img-{v}"), "wb") as f:
        f.write(early + main)
    return root
