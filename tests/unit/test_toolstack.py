"""The toolstack adapter, against faked xl processes."""

import pytest

from si_xen import toolstack
from si_xen.errors import Fatal

LIST_WITH = "Name  ID   Mem VCPUs State Time(s)\nDomain-0 0 1024 2 r----- 10.0\nvm1 3 512 1 -b---- 1.0\n"
LIST_WITHOUT = "Name  ID   Mem VCPUs State Time(s)\nDomain-0 0 1024 2 r----- 10.0\n"


def test_domains_parsed_from_xl_list(fp):
    fp.register(["/usr/sbin/xl", "list"], stdout=LIST_WITH)
    assert toolstack.Toolstack("xl", "/usr/sbin/xl").domains() == {"Domain-0": "r-----", "vm1": "-b----"}


def test_a_domain_already_going_away_counts_as_stopped(fp, monkeypatch):
    monkeypatch.setattr(toolstack, "sleep", lambda s: None)
    xl = "/usr/sbin/xl"
    fp.register([xl, "shutdown", "-w", "vm1"])
    fp.register([xl, "list"], stdout=LIST_WITH)
    fp.register([xl, "destroy", "vm1"], returncode=1, stderr="unable to find domain info")
    fp.register([xl, "list"], stdout=LIST_WITHOUT)
    toolstack.Toolstack("xl", xl).shutdown("vm1")
    assert fp.call_count([xl, "destroy", "vm1"]) == 1


def test_a_domain_that_never_goes_is_fatal(fp, monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(toolstack, "monotonic", lambda: next(clock))
    monkeypatch.setattr(toolstack, "sleep", lambda s: None)
    xl = "/usr/sbin/xl"
    fp.register([xl, "shutdown", "-w", "vm1"])
    fp.register([xl, "list"], stdout=LIST_WITH, occurrences=100)
    fp.register([xl, "destroy", "vm1"], returncode=1, occurrences=100)
    with pytest.raises(Fatal, match="does not go away"):
        toolstack.Toolstack("xl", xl).shutdown("vm1")


def test_start_refused_without_a_hypervisor(monkeypatch):
    monkeypatch.setattr(toolstack, "find", lambda choice="auto": toolstack.Toolstack("xl", "/usr/sbin/xl"))
    monkeypatch.setattr(toolstack, "hypervisor_running", lambda: False)
    with pytest.raises(Fatal, match="Xen is not running"):
        toolstack.require_running("auto")
