"""Running scenario scripts in the testbed and collecting what they report."""

from __future__ import annotations

from pathlib import Path

from tests.system import testbed

TIMINGS: list[tuple[str, float]] = []


def record(what: str, seconds: float) -> None:
    TIMINGS.append((what, seconds))


def run_scenarios(payload: Path, image_disk: Path, body: str, out: Path, *, xen: bool, timeout: float,
                  mem: int = 3072):
    """Boot once, run `body` after the dom0 setup; return (result, {scenario: ok}, log)."""
    script = f". ./lib.sh\n. ./scenarios.sh\n{body}\n"
    disks = [testbed.Disk("image-debian12", image_disk), testbed.Disk("scratch", size="8G"),
             testbed.Disk("lvm", size="12G")]
    res = testbed.boot(payload, script, xen=xen, timeout=timeout, mem=mem, outdir=out, disks=disks,
                       on_console=lambda line: print(line, flush=True))
    kind = "xen" if xen else "linux"
    if "dom0_up" in res.timings:
        record(f"{kind}: QEMU start -> dom0 runner", res.timings["dom0_up"])
    record(f"{kind}: whole QEMU run", res.timings["qemu"])
    log = res.log()
    scenarios = {}
    for line in log.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "TIMING":
            record(f"{kind}: {parts[1]}", float(parts[2]))
        if len(parts) == 4 and parts[0] == "SCENARIO":
            scenarios[parts[1]] = parts[2] == "ok"
            record(f"{kind}: scenario {parts[1]} ({parts[2]})", float(parts[3]))
    return res, scenarios, log
