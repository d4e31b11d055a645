"""Running scenario scripts in the testbed and collecting what they report."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tests.system import testbed

TIMINGS: list[tuple[str, float]] = []


def record(what: str, seconds: float) -> None:
    TIMINGS.append((what, seconds))


@dataclass
class Run:
    res: testbed.Result
    log: str
    ok: dict[str, bool] = field(default_factory=dict)  # scenario -> passed every check
    reached: set[str] = field(default_factory=set)  # VMs whose login prompt appeared

    def section(self, name: str) -> str:
        start = self.log.find(f"=== scenario {name} (finish)")  # two-phase scenarios: the checking half
        if start < 0:
            start = self.log.find(f"=== scenario {name}")
        end = self.log.find(f"SCENARIO {name} ", start)
        return self.log[start:end + 200][-6000:] if start >= 0 else self.res.tail()


def run_scenarios(payload: Path, image_disk: Path, body: str, out: Path, *, xen: bool, timeout: float,
                  mem: int = 3072):
    """Boot once, run `body` (lib.sh and scenarios.sh sourced) in dom0; collect what it reports."""
    script = f". ./lib.sh\n. ./scenarios.sh\n{body}\n"
    disks = [testbed.Disk("image-debian12", image_disk), testbed.Disk("scratch", size="8G"),
             testbed.Disk("lvm", size="12G")]
    res = testbed.boot(payload, script, xen=xen, timeout=timeout, mem=mem, outdir=out, disks=disks,
                       on_console=lambda line: print(line, flush=True))
    kind = "xen" if xen else "linux"
    if "dom0_up" in res.timings:
        record(f"{kind}: QEMU start -> dom0 runner", res.timings["dom0_up"])
    record(f"{kind}: whole QEMU run", res.timings["qemu"])
    run = Run(res, res.log())
    for line in run.log.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "REACHED":
            run.reached.add(parts[1])
        if len(parts) == 3 and parts[0] == "TIMING":
            record(f"{kind}: {parts[1]}", float(parts[2]))
        if len(parts) == 4 and parts[0] == "SCENARIO":
            run.ok[parts[1]] = parts[2] == "ok"
            record(f"{kind}: scenario {parts[1]} ({parts[2]})", float(parts[3]))
    return run
