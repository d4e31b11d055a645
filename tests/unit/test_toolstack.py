"""The toolstack adapter, against faked xl processes."""

import os
import subprocess

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


XEN_FILES = ("/sys/hypervisor/type", "/proc/xen/capabilities", "/dev/xen/privcmd")


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A dom0's facts, under tmp_path: an ``xl`` on PATH, and the files that say whether Xen runs
    (none yet: a machine booted without Xen)."""
    root = tmp_path / "host"
    xl = root / "bin" / "xl"
    xl.parent.mkdir(parents=True)
    xl.write_text("#!/bin/sh\n")
    xl.chmod(0o755)
    monkeypatch.setenv("PATH", str(xl.parent))

    def moved(path):
        return f"{root}{path}" if path in XEN_FILES else path

    real_open, real_exists = open, os.path.exists
    monkeypatch.setattr(toolstack, "open", lambda path, *a, **kw: real_open(moved(path), *a, **kw), raising=False)
    monkeypatch.setattr(os.path, "exists", lambda path: real_exists(moved(path)))
    return root


def _write(root, path, text=""):
    (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
    (root / path.lstrip("/")).write_text(text)


def test_start_refused_without_a_hypervisor(host):
    with pytest.raises(Fatal, match="Xen is not running"):
        toolstack.require_running("auto")
    _write(host, "/sys/hypervisor/type", "kvm\n")  # a guest of another hypervisor
    with pytest.raises(Fatal, match="Xen is not running"):
        toolstack.require_running("auto")


@pytest.mark.parametrize("files", [{"/sys/hypervisor/type": "xen\n"},
                                   {"/proc/xen/capabilities": "control_d\n", "/dev/xen/privcmd": ""}])
def test_start_allowed_on_a_running_dom0_with_the_toolstack_found(host, files):
    for path, text in files.items():
        _write(host, path, text)
    ts = toolstack.require_running("auto")
    assert (ts.name, ts.path) == ("xl", str(host / "bin" / "xl"))


def test_stop_is_a_clean_shutdown_and_true_once_gone(fp):
    xl = "/usr/sbin/xl"
    fp.register([xl, "shutdown", "-w", "vm1"])
    fp.register([xl, "list"], stdout=LIST_WITHOUT)
    assert toolstack.Toolstack("xl", xl).stop("vm1", 30) is True
    assert fp.call_count([xl, "shutdown", "-w", "vm1"]) == 1


def test_stop_that_times_out_is_false_and_never_destroys(fp):
    xl = "/usr/sbin/xl"

    def slow(p):  # what subprocess.run raises once xl outlives the timeout
        raise subprocess.TimeoutExpired(p.args, 0.05)

    fp.register([xl, "shutdown", "-w", "vm1"], callback=slow)
    fp.register([xl, "list"], stdout=LIST_WITH, occurrences=10)
    fp.register([xl, "destroy", fp.any()], occurrences=10)
    assert toolstack.Toolstack("xl", xl).stop("vm1", 0.05) is False
    assert fp.call_count([xl, "destroy", fp.any()]) == 0


def test_stop_of_a_domain_still_there_is_false_and_never_destroys(fp, monkeypatch):
    xl = "/usr/sbin/xl"
    clock = iter(range(0, 100, 10))  # seconds: each look at the clock 10 s later
    monkeypatch.setattr(toolstack, "monotonic", lambda: next(clock))
    monkeypatch.setattr(toolstack, "sleep", lambda s: None)
    fp.register([xl, "shutdown", "-w", "vm1"], returncode=1)
    fp.register([xl, "list"], stdout=LIST_WITH, occurrences=10)
    fp.register([xl, "destroy", fp.any()], occurrences=10)
    assert toolstack.Toolstack("xl", xl).stop("vm1", 30) is False
    assert fp.call_count([xl, "destroy", fp.any()]) == 0
    assert fp.call_count([xl, "list"]) == 3, "xl list until the timeout, then given up"


def test_stop_waits_for_xl_to_take_the_shut_down_domain_away(fp, monkeypatch):
    """Seen under real Xen: `xl shutdown -w` returned and `xl list` still showed the domain for a
    moment (xl's own process destroys it after the guest's poweroff): that is a stop, not a failure."""
    xl = "/usr/sbin/xl"
    monkeypatch.setattr(toolstack, "sleep", lambda s: None)
    fp.register([xl, "shutdown", "-w", "vm1"])
    fp.register([xl, "list"], stdout=LIST_WITH.replace("-b----", "---s--"))
    fp.register([xl, "list"], stdout=LIST_WITHOUT)
    assert toolstack.Toolstack("xl", xl).stop("vm1", 30) is True
