"""bench/firstdeploy --compare OTHER: this tree's si_mkxenvm (A) against another si-xen
checkout's (B), on the same images and the same scratch disk, round by round.

Each round runs, on each image, si_mkxenvm's cases (first deploy with its side work cold, first
deploy warm, further VM) for A then B, and for B then A in the next round, so a machine that
drifts (these are shared) weighs on both alike. Each side has its own venv (made by its
tests/setup-host if missing), config, state, logs and initramfs scan cache, so neither finds what
the other measured; the cold case empties all three caches. xen-create-image and the floor are
left out (bench/firstdeploy without --compare runs them).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from . import cases as C
from .main import REPO, ensure_venv, private_config
from .report import machine, machine_text
from .rounds import play, scratch, si_cases, warm_up

RULE = ("verdict: 'within noise' when A's and B's min-max ranges overlap or B/A lies within A's own "
        "spread, 1 +- (max-min)/median of A; else 'B slower' or 'B faster'")
CPU = ("CPU seconds, user+system of si_mkxenvm and the processes it waited for (the work done, "
       "side work included: less moved by the machine's other load than wall time, blind to waiting)")
COLD_NOTE = ("cold here also empties a private initramfs scan cache (SI_XEN_CACHE), which bench/firstdeploy "
             "alone leaves warm in /var/cache/si-xen: its cold figures are not these")


@dataclass
class Side:
    name: str  # "A" (this tree) or "B"
    repo: str
    commit: str
    ctx: C.Ctx
    cache: str  # its SI_XEN_CACHE


def commit(repo: str) -> str:
    """The checkout's commit, with '+changes' when tracked files differ from it."""
    head = subprocess.run(["git", "-C", repo, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
    return (head.stdout.strip() or "?") + ("+changes" if dirty.stdout.strip() else "")


def side(name: str, repo: str, workdir: str, log: str, xfs: str, rounds: int, image: str) -> Side:
    mk, rm = ensure_venv(repo)
    home = os.path.join(workdir, name)
    os.makedirs(os.path.join(home, "cfg"))
    conf, env = private_config(home)
    cache = env["SI_XEN_CACHE"] = os.path.join(home, "cache")
    ctx = C.Ctx(mk, rm, env, conf, os.path.join(home, "cfg"), log, rounds, xfs, "", image, "",
                os.path.join(home, "log"))
    return Side(name, repo, commit(repo), ctx, cache)


def run(args, other: str) -> tuple[list[Side], dict]:
    """The sides and {image: {case: {"A": {"s": [wall], "cpu_s": [cpu], "steps": [si_mkxenvm's]}, "B": ...}}}."""
    results: dict = {}
    with scratch() as (workdir, log, xfs, imgs):
        src = imgs["as si_getimage leaves it"]
        sides = [side(n, repo, workdir, log, xfs, args.rounds, src) for n, repo in (("A", REPO), ("B", other))]
        plan = {label: {s.name: si_cases(s.ctx, os.path.basename(path), s.cache) for s in sides}
                for label, path in imgs.items()}
        for s in sides:
            warm_up(s.ctx, os.path.basename(src))
        for r in range(args.rounds):
            order = sides if r % 2 == 0 else sides[::-1]
            print(f"round {r + 1}/{args.rounds}: {' then '.join(s.name for s in order)}", flush=True)
            for label in imgs:
                for s in order:
                    for case, sample in play(plan[label][s.name], r, label, log, f"{s.name} ").items():
                        got = results.setdefault(label, {}).setdefault(case, {}).setdefault(s.name, {})
                        for key, value in (("s", sample.seconds), ("cpu_s", sample.cpu_s), ("steps", sample.phases)):
                            got.setdefault(key, []).append(value)
    return sides, results


def verdict(a: list[float], b: list[float]) -> str:
    ma, mb = statistics.median(a), statistics.median(b)
    overlap = min(a) <= max(b) and min(b) <= max(a)
    if overlap or abs(mb / ma - 1) <= (max(a) - min(a)) / ma:
        return "within noise"
    return "B slower" if mb > ma else "B faster"


def _cell(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.2f} ({min(xs):.2f}-{max(xs):.2f})"


def table(results: dict, key: str) -> str:
    lines = [f"{'image':<26} {'case':<22} {'A median (min-max)':>20} {'B median (min-max)':>20} {'B/A':>6}  verdict"]
    for label, cs in results.items():
        for case, row in cs.items():
            a, b = row["A"][key], row["B"][key]
            ratio = statistics.median(b) / statistics.median(a)
            lines.append(f"{label:<26} {case:<22} {_cell(a):>20} {_cell(b):>20} {ratio:6.3f}  {verdict(a, b)}")
    return "\n".join(lines)


def verdicts(results: dict, key: str) -> dict:
    return {label: {case: verdict(row["A"][key], row["B"][key]) for case, row in cs.items()}
            for label, cs in results.items()}


def main(args) -> int:
    other = os.path.abspath(args.compare)
    if not os.path.isfile(os.path.join(other, "tests/setup-host")) or not os.path.isdir(os.path.join(other, "si_xen")):
        print(f"FATAL: {other} is not a si-xen checkout (no tests/setup-host, si_xen/)", file=sys.stderr)
        return 1
    json_path = args.json or os.path.join(REPO, "bench/results/firstdeploy-compare.json")
    t0 = time.monotonic()
    sides, results = run(args, other)
    wall = round(time.monotonic() - t0, 1)
    m = machine("xfs (reflink=1) on a loop-mounted sparse file in /var/tmp")
    who = "\n".join(f"{s.name}: {s.repo} at {s.commit}" for s in sides)
    print(f"\n{machine_text(m)}\n{who}\n{args.rounds} rounds (A,B then B,A), {wall / 60:.1f} min in all\n")
    print(f"Wall seconds, up to the scratch disk synced:\n{table(results, 's')}\n\n{CPU}:\n"
          f"{table(results, 'cpu_s')}\n\n{RULE}\n{COLD_NOTE}")
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump({"machine": m, "rounds": args.rounds, "wall_s": wall, "rule": RULE, "cold_note": COLD_NOTE,
                   "sides": {s.name: {"repo": s.repo, "commit": s.commit} for s in sides},
                   "verdicts": {"s": verdicts(results, "s"), "cpu_s": verdicts(results, "cpu_s")},
                   "results": results}, f, indent=1)
    print(f"\nJSON: {json_path}")
    return 0
