"""The start step: xl create is the deploy's point of no return (faked xl)."""

import os
import signal
from types import SimpleNamespace

import pytest

from si_xen import deploy, journal, toolstack
from si_xen.errors import Fatal
from si_xen.made import File
from si_xen.plan import Activation
from si_xen.record import VmRecord
from si_xen.rollback import Guard, Interrupted, signals_raise

XL = "/usr/sbin/xl"
LIST_WITHOUT = "Name  ID   Mem VCPUs State Time(s)\nDomain-0 0 1024 2 r----- 10.0\n"
LIST_WITH = LIST_WITHOUT + "vm 3 512 1 -b---- 1.0\n"


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """execute() with two steps: a config file, then the real start step, against a faked xl."""
    monkeypatch.setattr(toolstack, "find", lambda choice="auto": toolstack.Toolstack("xl", XL))
    monkeypatch.setattr(toolstack, "hypervisor_running", lambda: True)
    monkeypatch.setattr(deploy, "backend_for", lambda plan, lock_dir: SimpleNamespace(kind="file"))
    monkeypatch.setattr(deploy.bases, "ready", lambda plan, backend: True)
    settings = SimpleNamespace(paths={"state_dir": str(tmp_path / "state"), "lock_dir": str(tmp_path / "locks"),
                                      "log_dir": str(tmp_path / "log"), "template_dir": str(tmp_path)})
    cfg = tmp_path / "vm.cfg"
    plan = SimpleNamespace(hostname="vm", image_name="deb", cfg_path=str(cfg), storage="dir", storage_root=str(tmp_path),
                           thin_pool=None, clone=True, kernel=None, disks=(), force=False,
                           activation=Activation("auto", start=True, console=True))
    warned = []
    rep = SimpleNamespace(end_progress=lambda: None, detail=lambda t: None, warn=warned.append, say=lambda t: None,
                          log_path="/l")

    def config(c):
        c.journal.made(File(str(cfg)), cfg.write_text, 'name = "vm"\n')
        c.record = VmRecord("vm")
        c.journal.finish(c.record)

    def run(*later, guard=None):
        steps = (deploy.Step("config", config), next(s for s in deploy.STEPS if s.name == "start"), *later)
        return deploy.execute(plan, SimpleNamespace(path=str(tmp_path)), None, settings, rep, steps=steps, guard=guard)

    return SimpleNamespace(run=run, cfg=cfg, state=settings.paths["state_dir"], warned=warned)


def test_a_failing_xl_create_undoes_everything_and_attaches_no_console(driver, fp):
    fp.register([XL, "create", str(driver.cfg)], returncode=1, stderr="libxl: error: cannot allocate memory")
    fp.register([XL, "list"], stdout=LIST_WITHOUT)
    with pytest.raises(Fatal, match=r"step 'start' failed: /usr/sbin/xl exited 1: libxl: error: cannot allocate memory"):
        driver.run()
    assert not driver.cfg.exists() and journal.load(driver.state, "vm") is None
    assert fp.call_count([XL, "create", "-c", str(driver.cfg)]) == 0  # never with its console


def test_a_domain_xl_left_behind_when_create_failed_is_destroyed(driver, fp, monkeypatch):
    monkeypatch.setattr(toolstack, "sleep", lambda s: None)
    fp.register([XL, "create", str(driver.cfg)], returncode=3)
    fp.register([XL, "list"], stdout=LIST_WITH)
    fp.register([XL, "destroy", "vm"])
    fp.register([XL, "list"], stdout=LIST_WITHOUT)
    with pytest.raises(Fatal, match="step 'start' failed"):
        driver.run()
    assert fp.call_count([XL, "destroy", "vm"]) == 1 and journal.load(driver.state, "vm") is None


def test_once_created_a_later_failure_keeps_the_vm(driver, fp):
    fp.register([XL, "create", str(driver.cfg)])

    def fail(c):
        raise OSError(5, "Input/output error")

    rec = driver.run(deploy.Step("later", fail))
    assert rec == VmRecord("vm") and driver.cfg.exists()
    st = journal.load(driver.state, "vm")
    assert st.complete and [t.kind for t in st.things] == ["file", "domain"]
    assert driver.warned == ["step 'later' failed after VM vm was started ([Errno 5] Input/output error); the VM is kept"]
    assert fp.call_count([XL, "destroy", "vm"]) == 0


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGINT, signal.SIGTERM])
def test_once_created_a_signal_is_noted_not_raised(driver, fp, sig):
    fp.register([XL, "create", str(driver.cfg)])
    guard = Guard()
    with signals_raise(guard):  # as si_mkxenvm holds it, around the deploy and the console
        driver.run(deploy.Step("later", lambda c: os.kill(os.getpid(), sig)), guard=guard)
        assert guard.kept and guard.got == sig
        os.kill(os.getpid(), signal.SIGTERM)  # after the deploy, before a console: noted too
    assert guard.got == sig and driver.cfg.exists() and journal.load(driver.state, "vm").complete


def test_before_the_domain_a_signal_raises():
    guard = Guard()
    with pytest.raises(Interrupted) as e:
        with signals_raise(guard):
            os.kill(os.getpid(), signal.SIGHUP)
    assert e.value.signum == signal.SIGHUP and not guard.kept


def test_an_ignored_signal_stays_ignored():
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup si_mkxenvm ...
    try:
        with signals_raise():
            os.kill(os.getpid(), signal.SIGHUP)
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def test_a_batch_with_console_is_refused_before_anything(tmp_path, capsys):
    from si_xen.cli import common, mkxenvm

    from . import fakeimage

    root = fakeimage.make(tmp_path / "img")
    (tmp_path / "xen.conf").write_text(f"[paths]\nstate_dir = {tmp_path}/state\n")
    code = common.run_main("si_mkxenvm", mkxenvm.body, [root, "--hostname", "web[1-3]", "--dhcp", "--dir", str(tmp_path),
                                                        "--console", "--config", str(tmp_path / "xen.conf"), "--dry-run"])
    assert code == 1 and capsys.readouterr().err == (
        "FATAL: --console attaches the console of one VM, not of a batch (use --start, then xl console NAME)\n")


def test_an_image_that_keeps_changing_is_refused_after_three_deploys(monkeypatch):
    from si_xen import service
    from si_xen.image import survey

    made, said = [], []
    monkeypatch.setattr(service, "_ahead", lambda *a: ("tree", ["plan"], None))
    monkeypatch.setattr(service, "_plans", lambda *a: ["plan again"])

    def changed(req, image, settings, rep, plans, *rest):
        made.append(plans[0])
        raise survey.ImageChanged(SimpleNamespace(fingerprint="f"), survey.COPIED)

    monkeypatch.setattr(service, "_make", changed)
    rep = SimpleNamespace(say=said.append, warn=said.append)
    image = SimpleNamespace(name="deb", path="/nowhere")
    with pytest.raises(Fatal) as e:
        service.make_vms(SimpleNamespace(dry_run=False), image, SimpleNamespace(paths={"state_dir": "/nowhere"}), rep,
                         SimpleNamespace(walk=None), Guard())
    assert made == ["plan", "plan again", "plan again"]
    assert said == ["Not kept: the image changed while it was copied; planning again"] * 2
    assert str(e.value) == ("image 'deb' changed under each of 3 deploys (the image changed while it was copied); "
                            "nothing was kept (let whatever writes to the image (si_getimage, si_updateclient) "
                            "finish, then run this again)")
