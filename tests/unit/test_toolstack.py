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


# -- libvirt (--toolstack libvirt): virsh on libvirtd's libxl driver, faked

from si_xen import journal, made  # noqa: E402
from si_xen.toolstack import libvirt  # noqa: E402

VIRSH = "/usr/bin/virsh"
V = [VIRSH, "-c", "xen:///system"]
VLIST = " Id   Name    State\n-----------------------------\n 3    vm1     running\n 4    vm2     in shutdown\n\n"
VLIST_EMPTY = " Id   Name   State\n--------------------\n\n"


@pytest.fixture
def lv(monkeypatch):
    """A Libvirt toolstack at VIRSH, which the journal's undo finds too; no real sleeping."""
    ts = libvirt.Libvirt(VIRSH)
    monkeypatch.setattr(libvirt, "find_virsh", lambda: ts)
    monkeypatch.setattr(libvirt, "sleep", lambda s: None)
    return ts


def test_libvirt_domains_parsed_from_virsh_list(fp, lv):
    fp.register([*V, "list"], stdout=VLIST)
    assert lv.domains() == {"vm1": "running", "vm2": "in shutdown"}


def test_libvirt_define_autostart_start_console_argv(fp, lv, tmp_path):
    fp.register([*V, "define", "/etc/xen/vm1.xml"], stdout="Domain 'vm1' defined from /etc/xen/vm1.xml\n")
    fp.register([*V, "autostart", "vm1"])
    fp.register([*V, "start", "vm1"])
    lv.define("/etc/xen/vm1.xml")
    lv.autostart("vm1")
    got = []
    lv.create("/etc/xen/vm1.cfg", got.append, name="vm1")
    assert got == [None]  # made, no signal meanwhile
    assert lv.console_argv("vm1") == [*V, "console", "vm1"]
    assert lv.shown("console", "vm1") == "virsh -c xen:///system console vm1"
    # an update's or a rebuild's start knows only the config: the name is the XML's beside it
    (tmp_path / "vm9.xml").write_text("<domain type='xen'><name>vm9</name></domain>")
    assert lv.create_argv(str(tmp_path / "vm9.cfg"), None) == [*V, "start", "vm9"]


def test_libvirt_start_failure_is_not_made(fp, lv):
    fp.register([*V, "start", "vm1"], returncode=1, stderr="error: internal error: libxenlight failed to create")
    got = []
    with pytest.raises(Exception, match="libxenlight"):
        lv.create("/etc/xen/vm1.cfg", got.append, name="vm1")
    assert got == []


def test_libvirt_unreachable_is_one_fatal_naming_the_fix(fp, lv):
    fp.register([*V, "version"], returncode=1,
                stderr="error: failed to connect to the hypervisor\nerror: Failed to connect socket to "
                       "'/var/run/libvirt/libvirt-sock': No such file or directory\n")
    with pytest.raises(Fatal) as e:
        lv.reachable()
    assert "libvirtd is not reachable" in e.value.problem and "libvirt-sock" in e.value.problem
    assert "systemctl start libvirtd" in e.value.fix and "--toolstack xl" in e.value.fix
    fp.register([*V, "version"], stdout="Compiled against library: libvirt 9.0.0\nUsing API: Xen 9.0.0\n")
    lv.reachable()  # answers: no error


def test_require_libvirt_without_virsh(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no virsh (proc.which adds only the sbin dirs)
    monkeypatch.setattr(os.path, "exists", lambda p: False)  # shutil.which must not find /usr/sbin/virsh either
    with pytest.raises(Fatal, match="needs virsh") as e:
        toolstack.require_libvirt()
    assert "libvirt-clients" in e.value.fix


def test_auto_never_picks_libvirt(tmp_path, monkeypatch):
    """auto keeps its meaning (xl, else xm): a virsh alone is no toolstack of auto's."""
    virsh = tmp_path / "virsh"
    virsh.write_text("#!/bin/sh\n")
    virsh.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(toolstack.proc, "which", lambda n: str(tmp_path / n) if (tmp_path / n).exists() else None)
    assert toolstack.find("auto") is None
    ts = toolstack.find("libvirt")
    assert ts.name == "libvirt" and ts.path == str(virsh)


def test_libvirt_domstate(fp, lv):
    fp.register([*V, "domstate", "vm1"], stdout="shut off\n\n")
    assert lv.domstate("vm1") == "shut off"
    fp.register([*V, "domstate", "vm9"], returncode=1,
                stderr="error: failed to get domain 'vm9'\nerror: Domain not found: no domain with matching name 'vm9'\n")
    assert lv.domstate("vm9") is None
    fp.register([*V, "domstate", "vm1"], returncode=1, stderr="error: failed to connect to the hypervisor\n")
    with pytest.raises(OSError, match="failed to connect"):  # unknown, never "not defined"
        lv.domstate("vm1")


def test_libvirt_shutdown_waits_then_destroys(fp, lv, monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(libvirt, "monotonic", lambda: next(clock))
    fp.register([*V, "shutdown", "vm1"])
    fp.register([*V, "list"], stdout=VLIST, occurrences=7)  # never goes by itself: 6 polls in 60 s, then destroy's
    fp.register([*V, "destroy", "vm1"])
    fp.register([*V, "list"], stdout=VLIST_EMPTY)
    lv.shutdown("vm1", wait=60)
    assert fp.call_count([*V, "shutdown", "vm1"]) == 1 and fp.call_count([*V, "destroy", "vm1"]) == 1


def test_libvirt_stop_never_destroys(fp, lv, monkeypatch):
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(libvirt, "monotonic", lambda: next(clock))
    fp.register([*V, "shutdown", "vm1"])
    fp.register([*V, "list"], stdout=VLIST, occurrences=30)
    assert lv.stop("vm1", timeout=30) is False
    assert fp.call_count([*V, "destroy", "vm1"]) == 0


def test_undefine_and_autostart_off_only_what_libvirt_knows(fp, lv):
    fp.register([*V, "list", "--all", "--name"], stdout="vm2\n\n", occurrences=2)
    lv.undefine("vm1")  # gone already: fine, nothing run
    lv.autostart("vm1", on=False)
    assert fp.call_count([*V, "undefine", "--managed-save", "vm1"]) == 0 and fp.call_count([*V, "autostart", "--disable", "vm1"]) == 0
    fp.register([*V, "list", "--all", "--name"], stdout="vm1\nvm2\n", occurrences=2)
    fp.register([*V, "autostart", "--disable", "vm1"])
    fp.register([*V, "undefine", "--managed-save", "vm1"])
    lv.autostart("vm1", on=False)
    lv.undefine("vm1")
    assert fp.call_count([*V, "undefine", "--managed-save", "vm1"]) == 1


def test_journaled_definition_and_autostart_are_undone_newest_first(fp, lv, tmp_path):
    """What the deploy's define and autostart steps journal: a rollback (and si_rmxenvm, and the
    recovery after a crash, which read the journal back) disables the autostart, then undefines."""
    from types import SimpleNamespace

    from si_xen import deploy
    from si_xen.record import VmRecord
    from si_xen.report import Reporter

    fp.register([*V, "define", "/etc/xen/vm1.xml"])
    fp.register([*V, "autostart", "vm1"])
    j = journal.Journal(str(tmp_path), "vm1", VmRecord("vm1"))
    plan = SimpleNamespace(hostname="vm1", cfg_path="/etc/xen/vm1.cfg", net=SimpleNamespace(mac="00:16:3e:00:00:01"),
                           activation=SimpleNamespace(toolstack="libvirt", autostart=True))
    c = SimpleNamespace(plan=plan, old=None, journal=j, rep=Reporter(quiet=True), autostart=None)
    deploy._define(c)
    deploy._autostart(c)
    assert c.autostart is None  # no /etc/xen/auto link: libvirt's autostart only
    assert [t.kind for t in j.state.things] == ["libvirt-domain", "libvirt-autostart"]
    j.close()
    state = journal.load(str(tmp_path), "vm1")  # as a crash's recovery reads it
    assert [str(t) for t in state.things] == ["libvirt-domain vm1", "libvirt-autostart vm1"]
    fp.register([*V, "list", "--all", "--name"], stdout="vm1\n", occurrences=2)
    fp.register([*V, "autostart", "--disable", "vm1"])
    fp.register([*V, "domuuid", "vm1"], stdout=state.things[0].uuid + "\n", occurrences=2)  # the domain it defined
    fp.register([*V, "undefine", "--managed-save", "vm1"])
    assert state.things[1].uuid == state.things[0].uuid
    journal.remove(state)
    calls = [c for c in fp.calls if c[3:4] in (["autostart"], ["undefine"])]
    assert calls == [[*V, "autostart", "vm1"], [*V, "autostart", "--disable", "vm1"], [*V, "undefine", "--managed-save", "vm1"]]
    assert not os.path.exists(state.path)


def test_undo_without_virsh_is_a_leftover_not_silence(monkeypatch):
    monkeypatch.setattr(libvirt, "find_virsh", lambda: None)
    failed = journal.undo([made.LibvirtDefinition("vm1")])
    assert len(failed) == 1 and "may still be defined" in failed[0]


def test_xml_path_is_beside_the_config():
    assert libvirt.xml_path("/etc/xen/web01.cfg") == "/etc/xen/web01.xml"
    assert libvirt.xml_path("/etc/xen/web01") == "/etc/xen/web01.xml"
    # --extension "": two names that differ after their last dot get XML files of their own
    assert libvirt.xml_path("/etc/xen/db.example.com") != libvirt.xml_path("/etc/xen/db.example.net")
    assert libvirt.xml_path("/etc/xen/db.example.com") == "/etc/xen/db.example.com.xml"
    assert libvirt.xml_path("/etc/xen/web01.xml") == "/etc/xen/web01.xml.libvirt.xml"


def test_toolstack_option_is_checked(tmp_path):
    from si_xen.request import Request

    base = {"hostname": "vm1", "dir": str(tmp_path), "output": str(tmp_path), "dhcp": True}
    assert Request.from_options({**base, "toolstack": "libvirt"}).activation.toolstack == "libvirt"
    assert Request.from_options(base).activation.toolstack == "auto"  # the default stays auto
    with pytest.raises(Fatal, match="invalid --toolstack 'virsh'") as e:
        Request.from_options({**base, "toolstack": "virsh"})
    assert "libvirt" in e.value.fix


def test_the_undo_undefines_only_the_domain_si_xen_defined(fp, lv):
    """Another domain of the same name (the admin's, redefined meanwhile) has another uuid: kept."""
    fp.register([*V, "domuuid", "vm1"], stdout="0f0e0d0c-0000-4000-8000-000000000099\n")
    assert journal.undo([made.LibvirtDefinition("vm1", "5b7e1d0c-0000-4000-8000-000000000001")]) == []
    assert not [c for c in fp.calls if "undefine" in c]
    fp.register([*V, "domuuid", "vm1"], stdout="5b7e1d0c-0000-4000-8000-000000000001\n")
    fp.register([*V, "list", "--all", "--name"], stdout="vm1\n")
    fp.register([*V, "undefine", "--managed-save", "vm1"])
    assert journal.undo([made.LibvirtDefinition("vm1", "5b7e1d0c-0000-4000-8000-000000000001")]) == []
    assert [*V, "undefine", "--managed-save", "vm1"] in fp.calls


def test_the_undo_turns_autostart_off_only_for_the_domain_si_xen_defined(fp, lv):
    """The admin's domain of the same name keeps its autostart; si-xen's loses it."""
    mine, theirs = "5b7e1d0c-0000-4000-8000-000000000001", "0f0e0d0c-0000-4000-8000-000000000099"
    fp.register([*V, "domuuid", "vm1"], stdout=theirs + "\n")
    assert journal.undo([made.LibvirtAutostart("vm1", mine)]) == []
    assert not [c for c in fp.calls if "autostart" in c]
    fp.register([*V, "domuuid", "vm1"], stdout=mine + "\n")
    fp.register([*V, "list", "--all", "--name"], stdout="vm1\n")
    fp.register([*V, "autostart", "--disable", "vm1"])
    assert journal.undo([made.LibvirtAutostart("vm1", mine)]) == []
    assert [*V, "autostart", "--disable", "vm1"] in fp.calls
