"""Xen's own config parser (libxlutil 4.17) through ctypes: no hypervisor needed.

``parse(path)`` returns the settings xl would read, or raises XlParseError with libxlutil's
message. Disk specs go through ``xlu_disk_parse``; vif specs are parsed inside ``xl`` itself,
so they are checked here against xl-network-configuration(5)'s keywords.
"""

from __future__ import annotations

import ctypes
import os
import tempfile

LIBS = ("libxlutil.so.4.17", "libxenlight.so.4.17")
VIF_KEYS = {"mac", "bridge", "ip", "script", "vifname", "gatewaydev", "type", "model", "backend", "rate",
            "devid", "mtu", "vlan", "trusted", "untrusted", "accel", "forwarddev"}


class XlParseError(Exception):
    pass


def available() -> bool:
    try:
        for lib in LIBS:
            ctypes.CDLL(lib)
    except OSError:
        return False
    return True


def _libs():
    libc = ctypes.CDLL("libc.so.6")
    libc.fdopen.restype = ctypes.c_void_p
    libc.fdopen.argtypes = [ctypes.c_int, ctypes.c_char_p]
    libc.fflush.argtypes = [ctypes.c_void_p]
    xlu = ctypes.CDLL(LIBS[0])
    xl = ctypes.CDLL(LIBS[1])
    xlu.xlu_cfg_init.restype = ctypes.c_void_p
    xlu.xlu_cfg_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    xlu.xlu_cfg_readfile.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    xlu.xlu_cfg_get_string.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int]
    xlu.xlu_cfg_get_long.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_long), ctypes.c_int]
    xlu.xlu_cfg_get_list.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    xlu.xlu_cfg_get_listitem.restype = ctypes.c_char_p
    xlu.xlu_cfg_get_listitem.argtypes = [ctypes.c_void_p, ctypes.c_int]
    xlu.xlu_disk_parse.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
    xlu.xlu_cfg_destroy.argtypes = [ctypes.c_void_p]
    return libc, xlu, xl


def parse(path: str) -> dict:
    libc, xlu, xl = _libs()
    with tempfile.TemporaryFile() as errf:
        fd = os.dup(errf.fileno())
        err = libc.fdopen(fd, b"w")
        cfg = xlu.xlu_cfg_init(err, path.encode())
        try:
            rc = xlu.xlu_cfg_readfile(cfg, path.encode())
            libc.fflush(err)
            if rc:
                errf.seek(0)
                raise XlParseError(f"readfile rc {rc}: {errf.read().decode(errors='replace').strip()}")
            out: dict = {}
            for key in ("name", "type", "kernel", "ramdisk", "cmdline", "bootloader", "root", "extra"):
                v = ctypes.c_char_p()
                if xlu.xlu_cfg_get_string(cfg, key.encode(), ctypes.byref(v), 1) == 0:
                    out[key] = v.value.decode()
            for key in ("memory", "maxmem", "vcpus"):
                v = ctypes.c_long()
                if xlu.xlu_cfg_get_long(cfg, key.encode(), ctypes.byref(v), 1) == 0:
                    out[key] = v.value
            for key in ("disk", "vif"):
                lst, n = ctypes.c_void_p(), ctypes.c_int()
                items = []
                if xlu.xlu_cfg_get_list(cfg, key.encode(), ctypes.byref(lst), ctypes.byref(n), 0) == 0:
                    items = [xlu.xlu_cfg_get_listitem(lst, i).decode() for i in range(n.value)]
                out[key] = items
            for spec in out["disk"]:
                buf = ctypes.create_string_buffer(8192)
                xl.libxl_device_disk_init(buf)
                arr = (ctypes.c_char_p * 1)(spec.encode())
                rc = xlu.xlu_disk_parse(cfg, 1, arr, buf)
                libc.fflush(err)
                if rc:
                    errf.seek(0)
                    raise XlParseError(f"disk spec {spec!r} rc {rc}: {errf.read().decode(errors='replace').strip()}")
            for spec in out["vif"]:
                for item in filter(None, (x.strip() for x in spec.split(","))):
                    if item.split("=", 1)[0] not in VIF_KEYS:
                        raise XlParseError(f"vif spec {spec!r}: unknown key {item!r}")
            return out
        finally:
            xlu.xlu_cfg_destroy(cfg)
