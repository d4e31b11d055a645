"""Many VMs from one command: hostname patterns, consecutive addresses, parallel workers.

``web[01-20]`` expands to web01..web20 (the width of the first bound is kept), and a list
may mix names and patterns: ``db1,web[1-3]``. With static addresses, each VM gets the next
address after the previous VM's.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time

from .errors import Fatal
from .report import Reporter

_RANGE = re.compile(r"^(.*)\[(\d+)-(\d+)\](.*)$")
MAX_VMS = 1000


def expand(spec: str) -> list[str]:
    names: list[str] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _RANGE.match(part)
        if not m:
            names.append(part)
            continue
        head, lo, hi, tail = m.groups()
        if int(hi) < int(lo) or int(hi) - int(lo) >= MAX_VMS:
            raise Fatal(f"invalid hostname range '{part}'", "write it low-high, e.g. web[01-20]")
        names += [f"{head}{n:0{len(lo)}d}{tail}" for n in range(int(lo), int(hi) + 1)]
    if len(set(names)) != len(names):
        raise Fatal(f"hostname list '{spec}' names a VM twice", "give each VM once")
    if len(names) > MAX_VMS:
        raise Fatal(f"{len(names)} VMs in one command", f"deploy at most {MAX_VMS} at a time")
    return names


def shifted(ips: list[str], offset: int) -> list[str]:
    """The addresses of the offset-th VM of a batch (prefix lengths kept)."""
    out = []
    for ip in ips:
        addr, sep, prefix = ip.partition("/")
        try:
            out.append(str(ipaddress.IPv4Address(addr) + offset) + sep + prefix)
        except (ValueError, ipaddress.AddressValueError):
            out.append(ip)  # check_network names the bad address
    return out


def run(plans, worker, args: tuple, rep: Reporter, workers: int | None = None, did: str = "made") -> tuple[list, list[str]]:
    """``worker(plan, *args)`` for every plan, returning its VM's record: the first alone (it
    may build the base the others clone), the others in parallel processes (``worker`` and
    ``args`` are pickled to them: a module-level function). A failure is that VM's only."""
    workers = workers or max(1, min(len(plans), os.cpu_count() or 1))
    done: list = []
    failed: list[str] = []
    t0 = time.monotonic()

    def report(p, rec=None, err=None):
        n = len(done) + len(failed) + 1
        if rec is not None:
            done.append(rec)
            rep.say(f"[{n:>{len(str(len(plans)))}}/{len(plans)}] {p.hostname:<24} done   {rec.seconds:6.2f} s")
        else:
            failed.append(f"{p.hostname} ({err})")
            rep.say(f"[{n}/{len(plans)}] {p.hostname:<24} FAILED {err}")

    try:
        _all(plans, worker, args, workers, report)
    except BaseException as e:  # an interrupt: the VMs made are kept, and the message says so
        e.kept = [rec.name for rec in done]
        raise
    rep.say(f"\n{len(done)} of {len(plans)} VMs {did} in {time.monotonic() - t0:.1f} s")
    return done, failed


def _all(plans, worker, args: tuple, workers: int, report) -> None:
    first, rest = plans[0], plans[1:]
    try:
        report(first, worker(first, *args))
    except Fatal as e:
        report(first, err=e)
    if rest:
        # imported here: a single VM's deploy need not pay for the pool's modules (~20 ms)
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = {pool.submit(worker, p, *args): p for p in rest}
            for fut in as_completed(futures):
                try:
                    report(futures[fut], fut.result())
                except Exception as e:  # a failed VM is reported; the batch goes on
                    report(futures[fut], err=e)
