"""hooks/ match the registry; the xen-tools contract; si_xenhooks list/run/install/uninstall."""

import os
import subprocess
import sys

import pytest

from si_xen.cli import xenhooks
from si_xen.fixups import FIXUPS, by_name
from si_xen.fixups.hooks import hook_main
from si_xen.fixups.xentools import hook_text
from tests.unit.fixups.trees import DEB_INITTAB, build

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
HOOKS = os.path.join(REPO, "hooks")


def test_checked_in_hooks_match_registry():
    # beside the fixups' hooks: ganeti/, the Ganeti OS definition (tests/unit/test_ganeti.py)
    assert sorted(os.listdir(HOOKS)) == sorted([*(f.hook for f in FIXUPS), "ganeti"])
    for fx in FIXUPS:
        path = os.path.join(HOOKS, fx.hook)
        assert os.access(path, os.X_OK)
        with open(path) as f:
            assert f.read() == hook_text(fx), f"regenerate {path}"
        assert "$CONFIG{" not in hook_text(fx)  # xen-tools t/plugin-checks.t


@pytest.fixture
def run_hook(monkeypatch, capsys):
    """A hook as xen-create-image runs it (the checked-in file only calls hook_main, see above):
    $1 the prefix, settings only from the environment. Run for real in tests/integration."""

    def run(hook, prefix, **env):
        with monkeypatch.context() as m:
            m.setattr(os, "environ", {"PATH": os.environ["PATH"], "LC_ALL": "C", **env})
            code = hook_main(by_name(hook).name, [prefix])
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([hook, prefix], code, out, err)

    return run


def test_xen_tools_hostname_test_on_bare_prefix(tmp_path, run_hook):
    """xen-tools' t/hook-hostname.t: only hostname and dhcp=1, a prefix with just etc/."""
    (tmp_path / "etc").mkdir()
    r = run_hook("50-setup-hostname", str(tmp_path), hostname="steve", dhcp="1")
    assert r.returncode == 0, r.stderr
    for f in ("hosts", "hostname", "mailname"):
        assert (tmp_path / "etc" / f).exists()


def test_xen_tools_inittab_test(tmp_path, run_hook):
    """xen-tools' t/hook-inittab.t: exactly one uncommented numbered getty, id 1, on hvc0."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/inittab").write_text(DEB_INITTAB)
    assert run_hook("30-disable-gettys", str(tmp_path)).returncode == 0
    gettys = [ln for ln in (tmp_path / "etc/inittab").read_text().splitlines()
              if not ln.startswith("#") and "getty" in ln]
    assert gettys == ["1:2345:respawn:/sbin/getty 38400 hvc0"]


def test_hook_writes_resolv_conf_old_and_bad_env_fails(tmp_path, run_hook):
    root = build(tmp_path / "g", "debian12")
    r = run_hook("40-setup-networking", root, hostname="vm", ip1="10.0.0.5", netmask="24", nameserver="10.0.0.1")
    assert r.returncode == 0, r.stderr
    with open(os.path.join(root, "etc/resolv.conf.old")) as f:
        assert f.read() == "nameserver 10.0.0.1\n"
    r = run_hook("40-setup-networking", root, dhcp="maybe")
    assert r.returncode == 1 and r.stderr.startswith("FATAL:")
    assert run_hook("40-setup-networking", "").returncode == 2


def test_cli_list_and_version(capsys):
    assert xenhooks.main(["list"]) == 0
    out = capsys.readouterr().out
    for fx in FIXUPS:
        assert fx.hook in out and fx.summary in out
    try:
        xenhooks.main(["--version"])
    except SystemExit:
        pass
    assert capsys.readouterr().out.startswith("si_xenhooks (part of si-xen) v")


def test_cli_run_only_skip(tmp_path, monkeypatch, capsys):
    root = build(tmp_path / "g", "debian4")
    monkeypatch.setenv("hostname", "vm9")
    assert xenhooks.main(["run", root, "--only", "hostname,fstab", "--skip", "fstab"]) == 0
    assert (tmp_path / "g/etc/hostname").read_text() == "vm9\n"
    assert "sda1" in (tmp_path / "g/etc/fstab").read_text()
    assert xenhooks.main(["run", root, "--only", "hostname"]) == 0
    assert "nothing to change" in capsys.readouterr().out
    assert xenhooks.main(["run", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.startswith("FATAL:")


def test_install_uninstall_into_root(tmp_path):
    root = str(tmp_path / "r")
    os.makedirs(os.path.join(root, "etc/xen-tools/role.d"))
    assert xenhooks.main(["install-xen-tools", "--root", root]) == 0
    hookdir = os.path.join(root, "usr/share/xen-tools/systemimager.d")
    assert sorted(os.listdir(hookdir)) == sorted(f.hook for f in FIXUPS)
    with open(os.path.join(hookdir, FIXUPS[0].hook)) as f:
        assert f.readline() == f"#!{sys.executable}\n"
    role = os.path.join(root, "etc/xen-tools/role.d/systemimager")
    assert os.access(role, os.X_OK)
    assert xenhooks.main(["install-xen-tools", "--root", root]) == 0  # re-install over our own files
    assert xenhooks.main(["uninstall-xen-tools", "--root", root]) == 0
    left = sorted(os.path.relpath(os.path.join(d, n), root) for d, ds, fs in os.walk(root) for n in ds + fs)
    assert left == ["etc", "etc/xen-tools", "etc/xen-tools/role.d"]  # exactly what was there before
    assert xenhooks.main(["uninstall-xen-tools", "--root", root]) == 1


def test_install_refuses_foreign_file(tmp_path, capsys):
    role = tmp_path / "etc/xen-tools/role.d/systemimager"
    role.parent.mkdir(parents=True)
    role.write_text("#!/bin/sh\n# someone else's\n")
    assert xenhooks.main(["install-xen-tools", "--root", str(tmp_path)]) == 1
    assert "not written by si-xen" in capsys.readouterr().err
    assert role.read_text() == "#!/bin/sh\n# someone else's\n"
    assert not (tmp_path / "usr").exists()  # nothing half-installed


def test_man_page_fixups_match_registry():
    from si_xen.fixups.manpage import render

    with open(os.path.join(REPO, "man/si_xenhooks.8")) as f:
        page = f.read()
    assert render(page) == page, "run man/gen-fixups"
    for fx in FIXUPS:
        assert fx.name in page
