"""What Ganeti passes an OS script (ganeti-os-interface(7), API 20), read into one value.

Ganeti clears the environment and sets OS_*, OSP_*, INSTANCE_*, DISK_N_*, NIC_N_* and the
per-script variables (INSTANCE_REINSTALL, OLD_INSTANCE_NAME, EXPORT_*/IMPORT_*)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import Fatal


@dataclass(frozen=True)
class GDisk:
    index: int
    path: str
    size_mib: int  # DISK_N_SIZE (Ganeti 3.0); 0 when not given
    access: str = "rw"
    backend: str = "block"  # block | file:loop ...


@dataclass(frozen=True)
class Nic:
    index: int
    mac: str
    ip: str = ""
    bridge: str = ""
    mode: str = ""
    link: str = ""
    subnet: str = ""  # NIC_N_NETWORK_SUBNET, e.g. 192.0.2.0/24
    gateway: str = ""


@dataclass(frozen=True)
class Instance:
    name: str
    os: str  # INSTANCE_OS: NAME[+VARIANT]
    variant: str
    osp: dict[str, str]
    disks: tuple[GDisk, ...] = ()
    nics: tuple[Nic, ...] = ()
    hv: dict[str, str] = field(default_factory=dict)  # INSTANCE_HV_<key>, keys as Ganeti spells them
    be: dict[str, str] = field(default_factory=dict)
    hypervisor: str = ""
    reinstall: bool = False
    old_name: str = ""
    debug: int = 0


def osp_of(env: dict[str, str]) -> dict[str, str]:
    """OSP_NAME -> name (Ganeti upper-cases the parameter and turns - into _)."""
    return {k[4:].lower(): v for k, v in env.items() if k.startswith("OSP_")}


def _int(env: dict[str, str], key: str, default: int | None = None) -> int:
    raw = env.get(key)
    if raw in (None, ""):
        if default is None:
            raise Fatal(f"{key} is not set", "run this script from Ganeti (gnt-instance add/reinstall/rename)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise Fatal(f"{key}='{raw}' is not a number", "run this script from Ganeti") from None


def _need(env: dict[str, str], key: str) -> str:
    if not env.get(key):
        raise Fatal(f"{key} is not set", "run this script from Ganeti (gnt-instance add/reinstall/rename)")
    return env[key]


def instance(env: dict[str, str]) -> Instance:
    disks = []
    for i in range(_int(env, "DISK_COUNT", 0)):
        p = f"DISK_{i}_"
        path = env.get(p + "PATH", "")
        if not path:
            raise Fatal(f"disk {i} has no {p}PATH (only a URI: {env.get(p + 'URI', 'none')})",
                        "use a disk template with a local path (plain, file, drbd)")
        disks.append(GDisk(i, path, _int(env, p + "SIZE", 0), env.get(p + "ACCESS", "rw"),
                           env.get(p + "BACKEND_TYPE", "block")))
    nics = []
    for i in range(_int(env, "NIC_COUNT", 0)):
        p = f"NIC_{i}_"
        nics.append(Nic(i, env.get(p + "MAC", ""), env.get(p + "IP", ""), env.get(p + "BRIDGE", ""),
                        env.get(p + "MODE", ""), env.get(p + "LINK", ""), env.get(p + "NETWORK_SUBNET", ""),
                        env.get(p + "NETWORK_GATEWAY", "")))
    os_name = env.get("INSTANCE_OS", env.get("OS_NAME", ""))
    return Instance(
        name=_need(env, "INSTANCE_NAME"), os=os_name, variant=env.get("OS_VARIANT", os_name.partition("+")[2]),
        osp=osp_of(env), disks=tuple(disks), nics=tuple(nics),
        hv={k[12:]: v for k, v in env.items() if k.startswith("INSTANCE_HV_")},
        be={k[12:]: v for k, v in env.items() if k.startswith("INSTANCE_BE_")},
        hypervisor=env.get("HYPERVISOR", ""), reinstall=env.get("INSTANCE_REINSTALL") == "1",
        old_name=env.get("OLD_INSTANCE_NAME", ""), debug=_int(env, "DEBUG_LEVEL", 0),
    )
