"""What si_mkxenvm made, one JSON record per VM, so si_lsxenvm/si_rmxenvm need no guessing."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager

from .domain import write_atomic
from .errors import Fatal
from .locks import exclusive


def vm_dir(state_dir: str) -> str:
    return os.path.join(state_dir, "vms")


def record_path(state_dir: str, name: str) -> str:
    return os.path.join(vm_dir(state_dir), f"{name}.json")


def save(state_dir: str, record: dict) -> str:
    os.makedirs(vm_dir(state_dir), exist_ok=True)
    path = record_path(state_dir, record["name"])
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n", 0o600)
    return path


def load(state_dir: str, name: str) -> dict | None:
    try:
        with open(record_path(state_dir, name), encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise Fatal(f"VM record {record_path(state_dir, name)} is corrupt: {e}", "remove it by hand") from None


def all_records(state_dir: str) -> list[dict]:
    try:
        names = sorted(n[:-5] for n in os.listdir(vm_dir(state_dir)) if n.endswith(".json"))
    except FileNotFoundError:
        return []
    return [r for r in (load(state_dir, n) for n in names) if r]


def remove(state_dir: str, name: str) -> None:
    try:
        os.unlink(record_path(state_dir, name))
    except FileNotFoundError:
        pass


@contextmanager
def lock(lock_dir: str, name: str):
    """One si_* command per VM name at a time; the lock file goes away with us."""
    path = os.path.join(lock_dir, f"{name}.lock")
    try:
        with exclusive(path, wait=False):
            yield
    except BlockingIOError:
        raise Fatal(f"another si_* command is working on VM '{name}' ({path})", "wait for it to finish") from None
