"""Statistics, the table, the issue-5 targets and the JSON record."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict

from .cases import Case

MB = 1 << 20


def stats(case: Case) -> dict:
    ok = [s for s in case.samples if s.rc == 0]
    if not ok:
        return {}
    secs = [s.seconds for s in ok]
    return {"median_s": round(statistics.median(secs), 3), "min_s": min(secs), "max_s": max(secs),
            "runs": len(ok), "disk_per_vm_bytes": int(statistics.median(s.used_bytes for s in ok) / case.vms),
            "peak_rss_mb": round(max(s.peak_kb for s in ok) / 1024, 1)}


def article_median(cases: list[Case]) -> float | None:
    for c in cases:
        if c.key == "article":
            return stats(c).get("median_s")
    return None


def _ratio(st: dict, base: float | None) -> str:
    return f"{st['median_s'] / base:.3f}x" if st and base else "n/a"


def row(case: Case, base: float | None) -> str:
    st = stats(case)
    if not st:
        return f"{case.label:<66} {'FAILED':>8}  {case.error[:200]}"
    span = f"{st['min_s']:.2f}-{st['max_s']:.2f}"
    disk = f"{st['disk_per_vm_bytes'] / MB:.1f} MB"
    return (f"{case.label:<66} {st['runs']:>4} {st['median_s']:>8.2f} {span:>13} {_ratio(st, base):>8} "
            f"{disk:>11} {st['peak_rss_mb']:>7.1f}")


def table(cases: list[Case]) -> str:
    base = article_median(cases)
    head = (f"{'case':<66} {'runs':>4} {'median s':>8} {'min-max s':>13} {'x art.':>8} "
            f"{'disk/VM':>11} {'peak MB':>7}")
    lines = [head, "-" * len(head)] + [row(c, base) for c in cases]
    notes = [f"  note ({c.key}): {c.note}" for c in cases if c.note]
    errors = [f"  error ({c.key}): {c.error[:400]}" for c in cases if c.error and stats(c)]
    return "\n".join(lines + notes + errors)


def phase_medians(case: Case) -> dict[str, float]:
    runs = [s.phases for s in case.samples if s.rc == 0 and s.phases]
    names = dict.fromkeys(n for r in runs for n in r)
    return {n: round(statistics.median(r.get(n, 0.0) for r in runs), 3) for n in names}


def phases_text(cases: list[Case]) -> str:
    """si_mkxenvm's own step times (medians, from its log), where the time of a deploy goes."""
    lines = []
    for c in cases:
        med = phase_medians(c)
        if med:
            steps = ", ".join(f"{n} {v:.2f}" for n, v in med.items())
            lines.append(f"  {c.key:<18} {steps}")
    return "\n".join(lines)


def _get(cases: list[Case], key: str) -> dict:
    return next((stats(c) for c in cases if c.key == key), {})


def _check(name: str, value, limit, ok) -> dict:
    return {"target": name, "value": value, "limit": limit, "met": ok}


def targets(cases: list[Case], image_bytes: int) -> list[dict]:
    art = article_median(cases)
    out = []
    for key in ("first-clone-xfs", "first-full-xfs", "first-full-ext4"):
        st = _get(cases, key)
        ratio = round(st["median_s"] / art, 3) if st and art else None
        out.append(_check(f"first deploy ({key}) <= 0.25x article", ratio, 0.25,
                          None if ratio is None else ratio <= 0.25))
    out.append(_bare_target(_get(cases, "first-full-xfs"), _get(cases, "bare-copy-xfs")))
    out += _further_targets(_get(cases, "further-xfs"), art, image_bytes)
    for key in ("batch20-xfs", "batch20-base-xfs"):
        st = _get(cases, key)
        out.append(_check(f"20-VM batch ({key}) <= 15 s", st.get("median_s"), 15,
                          st["median_s"] <= 15 if st else None))
    out.append(_memory_target(cases))
    out.append(_size_target(_get(cases, "further-xfs"), _get(cases, "furtherbig-xfs")))
    out.append(_clone_step_target(cases))
    return out


def _further_targets(st: dict, art: float | None, image_bytes: int) -> list[dict]:
    if not st:
        return [_check("further VM: measured", None, None, None)]
    ratio = round(st["median_s"] / art, 3) if art else None
    frac = round(st["disk_per_vm_bytes"] / image_bytes, 4)
    return [_check("further VM <= 0.5 s", st["median_s"], 0.5, st["median_s"] <= 0.5),
            _check("further VM <= 0.05x article", ratio, 0.05, None if ratio is None else ratio <= 0.05),
            _check("further VM extra disk <= 5 % of image", frac, 0.05, frac <= 0.05)]


def _bare_target(full: dict, bare: dict) -> dict:
    """Issue 5 item 2: the whole --full-copy pipeline at most 1.4x the bare copy (same filesystem)."""
    ratio = round(full["median_s"] / bare["median_s"], 3) if full and bare else None
    return _check("first deploy --full-copy (xfs) <= 1.4x bare copy (xfs)", ratio, 1.4,
                  None if ratio is None else ratio <= 1.4)


def _memory_target(cases: list[Case]) -> dict:
    peaks = [stats(c)["peak_rss_mb"] for c in cases if c.tool == "si_mkxenvm" and stats(c)]
    peak = max(peaks) if peaks else None
    return _check("si_mkxenvm peak memory <= 150 MB", peak, 150, None if peak is None else peak <= 150)


def _size_target(small: dict, big: dict) -> dict:
    """'Not growing': the big image's clone median within 25 % (or 0.1 s) of the small image's."""
    if not small or not big:
        return _check("clone time not growing with image size", None, None, None)
    limit = round(max(small["median_s"] * 1.25, small["median_s"] + 0.1), 3)
    return _check("clone time not growing with image size (big-image clone median)", big["median_s"], limit,
                  big["median_s"] <= limit)


def _clone_step_target(cases: list[Case]) -> dict:
    """The same comparison on si_mkxenvm's 'Cloning disk image' step alone (no key generation)."""
    med = {c.key: phase_medians(c) for c in cases if c.key in ("further-xfs", "furtherbig-xfs")}
    step = [next((v for n, v in med.get(k, {}).items() if n.startswith("Cloning")), None)
            for k in ("further-xfs", "furtherbig-xfs")]
    if None in step:
        return _check("clone step not growing with image size", None, None, None)
    limit = round(max(step[0] * 1.25, step[0] + 0.1), 3)
    return _check("clone step alone not growing with image size (big-image step median)", step[1], limit,
                  step[1] <= limit)


def targets_text(checks: list[dict]) -> str:
    word = {True: "MET", False: "NOT MET", None: "UNKNOWN"}
    return "\n".join(f"  [{word[c['met']]:>7}] {c['target']}: {c['value']} (limit {c['limit']})" for c in checks)


def machine(scratch_fs: str) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem_kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nproc": os.cpu_count(), "cpu": cpu,
            "ram_gib": round(mem_kb / (1 << 20), 1), "kernel": platform.release(), "disk": scratch_fs,
            "xen_tools": _dpkg_version("xen-tools")}


def _dpkg_version(pkg: str) -> str:
    r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True)
    return r.stdout.strip() or "?"


def machine_text(m: dict) -> str:
    return (f"date {m['date']}; {m['nproc']} CPUs ({m['cpu']}); {m['ram_gib']} GiB RAM; kernel {m['kernel']}; "
            f"xen-tools {m['xen_tools']}\ndisk: {m['disk']}")


def write_json(path: str, payload: dict, cases: list[Case]) -> None:
    payload["cases"] = [{**asdict(c), "stats": stats(c), "phase_medians_s": phase_medians(c)} for c in cases]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)
