import re
import time

import pytest

from si_xen.batch import expand, shifted
from si_xen.errors import Fatal
from si_xen.report import Reporter


def test_patterns_and_lists():
    assert expand("web[01-03]") == ["web01", "web02", "web03"]
    assert expand("db1,web[8-10].lab") == ["db1", "web8.lab", "web9.lab", "web10.lab"]
    assert expand("solo") == ["solo"]


@pytest.mark.parametrize("spec,msg", [("w[3-1]", "invalid hostname range"), ("a,a", "twice"),
                                      ("w[0-5000]", "invalid hostname range")])
def test_bad_patterns(spec, msg):
    with pytest.raises(Fatal, match=msg):
        expand(spec)


def test_consecutive_addresses_keep_prefix():
    assert shifted(["10.0.0.10/24", "10.0.1.10"], 3) == ["10.0.0.13/24", "10.0.1.13"]
    assert shifted([], 5) == []


def test_an_interrupted_batch_says_which_vms_it_kept(monkeypatch, capsys):
    """The VMs a batch finished stay when it is interrupted, and the FATAL line says so (it said
    "everything made so far was removed")."""
    from types import SimpleNamespace

    from si_xen import batch
    from si_xen.cli.common import run_main

    def one(plan, *_):
        if plan.hostname == "web2":
            raise KeyboardInterrupt
        return SimpleNamespace(name=plan.hostname, seconds=0.1)

    monkeypatch.setattr(batch, "_all", lambda plans, worker, args, workers, report: [
        report(p, worker(p, *args)) for p in plans])
    plans = [SimpleNamespace(hostname=h) for h in ("web1", "web2", "web3")]
    assert run_main("si_mkxenvm", lambda argv: batch.run(plans, one, (), Reporter()), []) == 130
    err = capsys.readouterr().err
    assert err.startswith("FATAL: interrupted by SIGINT; VM web1 was made and is kept"), err
    assert "unfinished ones' work was removed" in err


# batch.run with each VM's deploy faked at one seam (the worker it is given) and the worker pool made of
# threads: the unit tier starts no process, and the order and reports are batch.run's own.
@pytest.fixture
def deploys(monkeypatch):
    """batch.run's per-VM deploys, faked: ``outcomes`` maps a hostname to a Fatal it raises;
    ``log`` is what each deploy saw, in order: (hostname, the hostnames finished when it began)."""
    import concurrent.futures
    import threading
    from types import SimpleNamespace

    from si_xen import batch

    fake = SimpleNamespace(outcomes={}, log=[], finished=[])
    lock = threading.Lock()

    def one(plan):
        with lock:
            fake.log.append((plan.hostname, tuple(fake.finished)))
        time.sleep(0.05 if plan.hostname == "web1" else 0.01)  # the first is slow: others must wait for it
        with lock:
            fake.finished.append(plan.hostname)
        if plan.hostname in fake.outcomes:
            raise fake.outcomes[plan.hostname]
        return SimpleNamespace(name=plan.hostname, seconds=0.25)

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor",
                        lambda max_workers, mp_context: concurrent.futures.ThreadPoolExecutor(max_workers))
    fake.run = lambda *names: batch.run([SimpleNamespace(hostname=h) for h in names], one, (), Reporter(), workers=4)
    return fake


def test_the_first_vm_is_made_alone_before_the_others(deploys):
    deploys.run("web1", "web2", "web3", "web4")
    assert deploys.log[0] == ("web1", ())
    assert sorted(h for h, _ in deploys.log[1:]) == ["web2", "web3", "web4"]
    assert all("web1" in before for _, before in deploys.log[1:]), deploys.log  # it may build their base


def test_a_failed_vm_is_confined_to_itself_and_reported(deploys, capsys):
    deploys.outcomes["web2"] = Fatal("disk full", "free some space")
    done, failed = deploys.run("web1", "web2", "web3")
    assert sorted(r.name for r in done) == ["web1", "web3"]
    assert failed == ["web2 (disk full (free some space))"]
    out = capsys.readouterr().out
    assert "web2                     FAILED disk full (free some space)" in out
    assert re.search(r"\[\d/3\] web3 +done +0\.25 s", out), out


def test_a_failed_first_vm_does_not_stop_the_batch(deploys):
    deploys.outcomes["web1"] = Fatal("mkfs failed")
    done, failed = deploys.run("web1", "web2")
    assert [r.name for r in done] == ["web2"] and failed == ["web1 (mkfs failed)"]


def test_the_summary_line_counts_what_was_made(deploys, capsys):
    deploys.outcomes["web3"] = Fatal("no space")
    deploys.run("web1", "web2", "web3")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[1/3] web1                     done     0.25 s"
    assert re.fullmatch(r"2 of 3 VMs made in \d+\.\d s", lines[-1]), lines
