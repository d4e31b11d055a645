"""A GuestSpec as xen-tools' hook environment (xen-tools.md §1.4): what xen-create-image
would give our hooks for this guest, host keys aside. The inverse of
``xentools.spec_from_env``, which the tests check it against; si-xen itself never renders it."""

from __future__ import annotations

from si_xen.fixups.spec import GuestSpec, Partition
from si_xen.fixups.xentools import DIST


def partition_env(p: Partition) -> str:
    return ":".join((p.name, p.size, p.fstype, p.mountpoint, p.options, p.kind, p.target))


def env_from_spec(spec: GuestSpec) -> dict[str, str]:
    n = spec.net
    env = {
        "hostname": spec.hostname, "dhcp": "1" if n.dhcp else "0", "mac": n.mac, "bridge": n.bridge,
        "netmask": n.netmask, "gateway": n.gateway, "broadcast": n.broadcast,
        "nameserver": " ".join(n.nameservers), "dist": DIST, "install_method": "copy",
        "install_source": spec.image_source, "disk_device": spec.disk, "serial_device": spec.serial,
        "NUMPARTITIONS": str(len(spec.partitions)),
    }
    env.update({f"ip{i}": ip for i, ip in enumerate(n.ips, 1)})
    if n.ips:
        env["ip_count"] = str(len(n.ips))
    if spec.pygrub:
        env["pygrub"] = "1"
    if spec.kernel:
        env.update(kernel=spec.kernel, initrd=spec.initrd)
    if spec.modules:
        env["modules"] = spec.modules
    if spec.image:  # not xen-tools' (its install_source is the image): for si-xen's own
        env["image_name"] = spec.image
    env.update({f"PARTITION{p.index}": partition_env(p) for p in spec.partitions})
    return env
