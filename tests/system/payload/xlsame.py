"""xlsame.py OURS THEIRS: two xl.cfg files agree on every setting both express (the VM as si-xen
wrote it, and as libvirt converts its domain XML back: `virsh domxml-to-native xen-xl`).
Compared: memory, vcpus, type, kernel, ramdisk, bootloader, the command line, each disk's target
and vdev, each vif's MAC and bridge. Exit 1 with the differences."""

import re
import sys

KEYS = ("memory", "maxmem", "vcpus", "type", "kernel", "ramdisk", "bootloader")


def parse(path: str) -> dict:
    """key -> value (a string, a number as text, or a list of strings), as xl.cfg writes them."""
    text = open(path).read()
    out = {}
    for m in re.finditer(r'^\s*(\w+)\s*=\s*(\[.*?\]|"[^"]*"|\S+)', text, re.M | re.S):
        v = m.group(2)
        out[m.group(1)] = re.findall(r'"([^"]*)"', v) if v.startswith("[") else v.strip('"')
    if "extra" in out and "cmdline" not in out:
        out["cmdline"] = out.pop("extra")
    return out


def fields(spec: str) -> dict:
    """xl's key=value list; si-xen writes ", " between them, libvirt "," (xl reads both)."""
    return dict(f.strip().split("=", 1) for f in spec.split(",") if "=" in f)


def disks(cfg: dict) -> set:
    return {(d.get("target"), d.get("vdev")) for d in map(fields, cfg.get("disk", []))}


def vifs(cfg: dict) -> set:
    return {(v.get("mac", "").lower(), v.get("bridge")) for v in map(fields, cfg.get("vif", []))}


def main(ours: str, theirs: str) -> int:
    a, b = parse(ours), parse(theirs)
    diff = [f"{k}: {a[k]!r} != {b[k]!r}" for k in (*KEYS, "cmdline") if k in a and k in b and a[k] != b[k]]
    if disks(a) != disks(b):
        diff.append(f"disks: {sorted(disks(a))} != {sorted(disks(b))}")
    if vifs(a) != vifs(b):
        diff.append(f"vifs: {sorted(vifs(a))} != {sorted(vifs(b))}")
    shared = [k for k in (*KEYS, "cmdline") if k in a and k in b]
    print(f"xl.cfg and libvirt's agree on {', '.join(shared)}, disks, vifs" if not diff else "\n".join(diff))
    return 1 if diff or len(shared) < 3 else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
