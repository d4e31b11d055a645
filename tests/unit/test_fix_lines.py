"""Fix lines name the VM's own toolstack's commands: ``virsh ... start NAME`` for a libvirt VM,
never ``libvirt create`` (there is no such command), ``xl create CFG`` for an xl one."""

import os
import re
from types import SimpleNamespace

import pytest

from si_xen import service, toolstack, update
from si_xen.errors import Fatal
from si_xen.record import VmRecord
from si_xen.toolstack import libvirt

HERE = os.path.dirname(__file__)
LV_START = "virsh -c xen:///system start vm1"


@pytest.fixture
def nothing_installed(monkeypatch):
    """No xl, xm or virsh on this host: the messages still name the right commands."""
    monkeypatch.setattr(toolstack.proc, "which", lambda n: None)


def test_each_toolstack_says_its_own_commands(nothing_installed):
    lv = toolstack.for_messages("libvirt")
    assert lv.start_shown("vm1", "/etc/xen/vm1.cfg") == LV_START
    assert lv.stop_shown("vm1") == "virsh -c xen:///system shutdown vm1"
    assert lv.shown("shutdown", "vm1") == "virsh -c xen:///system shutdown vm1"
    for choice in ("auto", "xl", None, ""):
        xl = toolstack.for_messages(choice)
        assert xl.start_shown("vm1", "/etc/xen/vm1.cfg") == "xl create /etc/xen/vm1.cfg"
        assert xl.stop_shown("vm1") == "xl shutdown -w vm1"
    assert toolstack.for_messages("xm").start_shown("vm1", "/etc/xen/vm1.cfg") == "xm create /etc/xen/vm1.cfg"


def test_the_toolstack_found_is_the_one_shown(monkeypatch):
    monkeypatch.setattr(toolstack.proc, "which", lambda n: f"/usr/sbin/{n}")
    assert toolstack.for_messages("libvirt").path == "/usr/sbin/virsh"
    assert isinstance(toolstack.for_messages("libvirt"), libvirt.Libvirt)
    assert toolstack.for_messages("auto").name == "xl"


def _update(toolstack_name: str, recorded: bool):
    rec = VmRecord("vm1", toolstack=toolstack_name, config="/etc/xen/vm1.cfg")
    rep = SimpleNamespace(warned=[], said=[], end_progress=lambda: None, detail=lambda s: None)
    rep.warn, rep.say = rep.warned.append, rep.said.append
    return SimpleNamespace(state=SimpleNamespace(record=rec), rec=rec, rep=rep, record=rec if recorded else None,
                           journal=SimpleNamespace(state=SimpleNamespace(update_steps=["record"])))


@pytest.mark.parametrize("ts, want", [("libvirt", LV_START), ("xl", "xl create /etc/xen/vm1.cfg")])
def test_an_update_not_started_names_the_start_command(nothing_installed, ts, want):
    u = _update(ts, recorded=True)
    err = update._failed(u, update.Step("start", update._start), OSError("no"))
    assert isinstance(err, Fatal) and err.fix == f"start it with {want}"
    assert update.ts_gone(u) and u.rep.warned[-1].endswith(f"({want})")  # no toolstack here: warned


def test_a_rebuild_put_back_names_the_start_command(nothing_installed, monkeypatch):
    rec = VmRecord("vm1", toolstack="libvirt", config="/etc/xen/vm1.cfg")
    st = SimpleNamespace(record=rec, replaces=None, complete=True)
    monkeypatch.setattr(service.journal, "load", lambda d, n: st)
    monkeypatch.setattr(service, "running", lambda n, choice="auto": False)
    warned = []
    service._start_again("vm1", "/state", True, SimpleNamespace(warn=warned.append, say=warned.append))
    assert warned and warned[-1].endswith(f"start it with {LV_START}")


def test_no_fix_line_makes_a_command_of_the_toolstacks_name():
    """``{ts.name} create`` or a literal ``xl create {...}`` would say ``libvirt create`` or
    ``xl`` for a libvirt VM: every such line goes through the toolstack's start_shown/shown."""
    root = os.path.join(HERE, "..", "..", "si_xen")
    bad = re.compile(r"\{ts\.name(?: if ts else 'xl')?\} (create|shutdown|start)|[\"' (]xl (create|shutdown) \{")
    allowed: dict[str, str] = {}
    found = []
    for d, _, files in os.walk(root):
        for f in files:
            if f.endswith(".py") and "toolstack" not in d:
                p = os.path.join(d, f)
                rel, text = os.path.relpath(p, root), open(p).read()
                if rel in allowed and allowed[rel] in text:
                    continue
                found += [f"{rel}:{n}" for n, line in enumerate(text.splitlines(), 1) if bad.search(line)]
    assert found == []
