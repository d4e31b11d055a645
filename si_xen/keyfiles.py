"""OpenSSH key files read and re-commented in-process: starting ssh-keygen for each costs more
than the rest of a further VM's key work, and a guest's key files are never handed to a guest
binary. The formats: PROTOCOL.key (private), RFC 4253 (public blobs)."""

from __future__ import annotations

import base64
import hashlib

from . import atomic

PUB_TYPES = {b"ssh-rsa": "rsa", b"ssh-dss": "dsa", b"ssh-ed25519": "ed25519"}  # and ecdsa-sha2-*


def pub_type(algo: bytes) -> str | None:
    return "ecdsa" if algo.startswith(b"ecdsa-sha2-") else PUB_TYPES.get(algo)


# An unencrypted OpenSSH private key (PROTOCOL.key): magic, cipher/kdf "none", one public key,
# then the private section: two check words, the key type, its fields, the comment, padding.
_MAGIC = b"openssh-key-v1\0"
_FIELDS = {b"ssh-rsa": 6, b"ssh-ed25519": 2, b"ssh-dss": 5}  # ecdsa-sha2-*: 3
_ARMOR = ("-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----")


def _strings(buf: bytes, at: int, n: int) -> int:
    """The offset after ``n`` length-prefixed strings starting at ``at``."""
    for _ in range(n):
        size = int.from_bytes(buf[at:at + 4], "big")
        at += 4 + size
        if at > len(buf):
            raise ValueError("truncated key")
    return at


def _string(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


def _unarmor(text: str) -> bytes | None:
    """The binary of an OpenSSH private key file; None if it is not one."""
    lines = text.split()
    if lines[:4] != _ARMOR[0].split() or lines[-4:] != _ARMOR[1].split():
        return None
    try:
        blob = base64.b64decode("".join(lines[4:-4]), validate=True)
    except ValueError:
        return None
    return blob if blob.startswith(_MAGIC) else None


def public_half(text: str) -> bytes | None:
    """The public key an OpenSSH private key file holds (its first); None if not such a file."""
    blob = _unarmor(text)
    if blob is None:
        return None
    try:
        at = _strings(blob, len(_MAGIC), 3) + 4  # cipher, kdf, kdf options; the key count
        return blob[at + 4:_strings(blob, at, 1)]
    except ValueError:
        return None


def recomment(path: str, comment: str) -> bool:
    """Give a stock key pair its VM's comment, as ``ssh-keygen -c`` would, without starting
    it (a process start costs more than the rest of a further deploy's key work).
    False if the private key is not an unencrypted OpenSSH key (the caller makes a new one)."""
    try:
        with open(path) as f:
            blob = _unarmor(f.read())
        if blob is None:
            return False
        at = _strings(blob, len(_MAGIC), 3)  # cipher, kdf, kdf options
        if blob[len(_MAGIC):at] != _string(b"none") * 2 + _string(b""):
            return False  # encrypted: not one of ours
        at = _strings(blob, at + 4, 1)  # one public key
        section_at = at + 4
        body = blob[section_at:_strings(blob, at, 1)]
        ktype_end = _strings(body, 8, 1)
        ktype = body[12:ktype_end]
        fields = 3 if ktype.startswith(b"ecdsa-sha2-") else _FIELDS.get(ktype)
        if fields is None:
            return False
        keep = body[:_strings(body, ktype_end, fields)]
        with open(path + ".pub") as f:
            pub = f.read().split()[:2]
    except (OSError, ValueError, IndexError):
        return False
    new = keep + _string(comment.encode())
    new += bytes(range(1, 1 + (-len(new)) % 8))  # padding to the "none" cipher's 8-byte blocks
    text = base64.b64encode(blob[:at] + _string(new)).decode()
    armored = "\n".join([_ARMOR[0], *(text[i:i + 70] for i in range(0, len(text), 70)), _ARMOR[1]]) + "\n"
    for name, data in ((path, armored), (path + ".pub", " ".join([*pub, comment]) + "\n")):
        atomic.write(name, data, 0o600)
    return True


def fingerprint(pub_line: str) -> str:
    """`ssh-keygen -lf` format (SHA256), computed without running it."""
    parts = pub_line.split()
    return fingerprint_of(base64.b64decode(parts[1]), parts[2:])


def fingerprint_of(blob: bytes, comment: list[str]) -> str:
    kind = blob[4:_strings(blob, 0, 1)]
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    label = {b"ssh-rsa": "RSA", b"ssh-dss": "DSA", b"ssh-ed25519": "ED25519"}.get(kind, kind.split(b"-")[0].decode().upper())
    return " ".join([f"SHA256:{digest}", *comment, f"({label})"])
