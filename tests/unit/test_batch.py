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
