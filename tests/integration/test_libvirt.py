"""si_mkxenvm --toolstack libvirt (and ``toolstack = libvirt`` in xen.conf) on the tiny test image,
with a FAKE ``virsh`` on PATH.

No real libvirtd can run here: this host has no Xen, and libvirtd's libxl driver needs a dom0
(``xen:///system`` does not connect without one). So ``virsh`` is a script that keeps its domains
in a directory (defined: the XML it was given; autostart; running) and logs its calls. The rest
is real: the deploy (loop devices, mkfs, rsync), the journal, rollback, si_rmxenvm and
si_lsxenvm, and the XML si_mkxenvm writes is checked with libvirt's own schema (the real
virt-xml-validate). The REAL proof -- a VM defined through libvirtd's libxl driver that boots to
its login prompt, ``virsh domxml-to-native xen-xl`` matching the xl.cfg, si_rmxenvm leaving no
domain defined -- is the Xen tier's (tests/system), not this file's.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import need_tools, require

from .harness import host_state, make_env, tiny_image

pytestmark = pytest.mark.integration
OPTS = ["--memory", "512M", "--size", "512M", "--noswap", "--dhcp"]
NAMES = tuple(f"lv-{n}" for n in range(1, 11))

FAKE_VIRSH = r'''#!/usr/bin/env python3
import os, re, shutil, sys, time
state = os.environ["FAKE_VIRSH_STATE"]
doms = os.path.join(state, "defined")
os.makedirs(doms, exist_ok=True)
args = sys.argv[1:]
with open(os.path.join(state, "calls"), "a") as f:
    f.write(" ".join(args) + "\n")
assert args[:2] == ["-c", "xen:///system"], args
args = args[2:]

def known(name):
    if not os.path.exists(os.path.join(doms, name + ".xml")):
        sys.stderr.write(f"error: failed to get domain '{name}'\nerror: Domain not found: no domain with matching name '{name}'\n")
        sys.exit(1)

if os.environ.get("FAKE_VIRSH_DOWN"):
    sys.stderr.write("error: failed to connect to the hypervisor\nerror: Failed to connect socket to "
                     "'/var/run/libvirt/libvirt-sock': No such file or directory\n")
    sys.exit(1)
if args[0] == "version":
    print("Compiled against library: libvirt 9.0.0\nUsing library: libvirt 9.0.0\nUsing API: Xen 9.0.0\n"
          "Running hypervisor: Xen 4.17.0")
elif args[0] == "define":
    if os.environ.get("FAKE_VIRSH_REFUSE") in ("1", args[1]):  # every define, or that file's
        sys.stderr.write("error: Failed to define domain from x.xml\nerror: unsupported configuration\n")
        sys.exit(1)
    name = re.search(r"<name>([^<]+)</name>", open(args[1]).read())[1]
    shutil.copy(args[1], os.path.join(doms, name + ".xml"))
    os.makedirs(os.path.join(state, "history"), exist_ok=True)  # what each define defined, in order
    shutil.copy(args[1], os.path.join(state, "history", "%03d.xml" % len(os.listdir(os.path.join(state, "history")))))
    print(f"Domain '{name}' defined from {args[1]}")
    if os.environ.get("FAKE_VIRSH_HANG"):  # the deploy dies here (the test kills it)
        with open(os.path.join(state, "hung"), "w") as f:
            f.write(str(os.getpid()))
        time.sleep(120)
elif args[0] == "autostart":
    name = args[-1]
    known(name)
    flag = os.path.join(doms, name + ".autostart")
    if "--disable" in args:
        if os.path.exists(flag):
            os.unlink(flag)
    else:
        open(flag, "w").close()
elif args[0] == "undefine":
    name = args[-1]
    known(name)
    if os.path.exists(os.path.join(doms, name + ".managedsave")) and "--managed-save" not in args:
        sys.stderr.write("error: Failed to undefine domain '%s'\nerror: Requested operation is not valid: "
                         "Refusing to undefine while domain managed save image exists\n" % name)
        sys.exit(1)
    for ext in (".xml", ".autostart", ".managedsave"):
        if os.path.exists(os.path.join(doms, name + ext)):
            os.unlink(os.path.join(doms, name + ext))
elif args[0] == "managedsave-remove":
    known(args[1])
    if os.path.exists(os.path.join(doms, args[1] + ".managedsave")):
        os.unlink(os.path.join(doms, args[1] + ".managedsave"))
elif args[0] == "list":
    names = sorted(n[:-4] for n in os.listdir(doms) if n.endswith(".xml"))
    if "--name" in args:
        print("\n".join(names + [""]))
    else:
        print(" Id   Name   State\n--------------------\n")  # none running: no Xen to run them
elif args[0] == "domuuid":
    known(args[1])
    print(re.search(r"<uuid>([^<]+)</uuid>", open(os.path.join(doms, args[1] + ".xml")).read())[1] + "\n")
elif args[0] == "dumpxml":
    known(args[-1])
    print(open(os.path.join(doms, args[-1] + ".xml")).read(), end="")
elif args[0] == "dominfo":
    known(args[1])
    auto = "enable" if os.path.exists(os.path.join(doms, args[1] + ".autostart")) else "disable"
    saved = "yes" if os.path.exists(os.path.join(doms, args[1] + ".managedsave")) else "no"
    print(f"Id:             -\nName:           {args[1]}\nState:          shut off\nAutostart:      {auto}\n"
          f"Managed save:   {saved}\n")
elif args[0] == "domstate":
    known(args[1])
    print("shut off\n")
else:
    sys.stderr.write(f"fake virsh: {args[0]} not faked\n")
    sys.exit(2)
'''


@pytest.fixture
def lv(tmp_path, monkeypatch, as_root):
    need_tools("rsync", "mkfs.ext4", "losetup", "ssh-keygen")
    images = tmp_path / "images"
    tiny_image(images)
    env = make_env(tmp_path / "e", str(images))
    bindir, state = tmp_path / "bin", tmp_path / "virsh"
    bindir.mkdir()
    state.mkdir()
    (bindir / "virsh").write_text(FAKE_VIRSH)
    (bindir / "virsh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VIRSH_STATE", str(state))
    before = host_state(env.base, NAMES)
    yield env, state
    hung = state / "hung"
    if hung.exists():
        try:
            os.kill(int(hung.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert host_state(env.base, NAMES) == before, "loop devices, mounts or temp dirs left"


def calls(state) -> list[str]:
    p = state / "calls"
    return [c.removeprefix("-c xen:///system ") for c in p.read_text().splitlines()] if p.exists() else []


def nothing_left(env, state, name):
    assert not os.path.exists(f"{env.state}/vms/{name}.journal"), "journal left"
    assert not os.path.exists(f"{env.dir}/domains/{name}"), "disks left"
    assert not [n for n in os.listdir(env.output) if n.startswith(name)], "config or XML left"
    assert not [n for n in os.listdir(state / "defined") if n.startswith(name)] if (state / "defined").exists() else True
    assert os.listdir(env.lock) == [] if os.path.isdir(env.lock) else True


def test_defined_autostarted_listed_and_removed_through_libvirt(lv):
    """toolstack = libvirt in xen.conf: the VM is defined from XML beside its xl.cfg (which libvirt's
    schema accepts), autostarted by libvirt and never linked in /etc/xen/auto, shown with
    libvirt's state, and si_rmxenvm undefines it."""
    env, state = lv
    with open(env.config, "a") as f:
        f.write("[defaults]\ntoolstack = libvirt\n")
    cp = env.mk("tiny", "--hostname", "lv-1", *OPTS, "--autostart", "--dir", env.dir, "--output", env.output)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    xml = f"{env.output}/lv-1.xml"
    assert os.path.exists(f"{env.output}/lv-1.cfg") and os.path.exists(xml)
    assert not os.path.exists(f"{env.output}/auto"), "an /etc/xen/auto link too would start it twice"
    assert (state / "defined" / "lv-1.xml").read_text() == open(xml).read()
    assert (state / "defined" / "lv-1.autostart").exists()
    made = calls(state)
    assert made[0] == "version" and [c for c in made if not c.startswith(("version", "list"))] == \
        ["define " + xml, "autostart lv-1"], made
    assert "list --all --name" in made[:made.index("define " + xml)], "asked whether libvirt has it already"
    require(shutil.which("virt-xml-validate") and shutil.which("xmllint"), "virt-xml-validate needed")
    v = subprocess.run(["virt-xml-validate", xml, "domain"], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    dom = ET.parse(xml).getroot()
    assert dom.findtext("os/kernel") == f"{env.dir}/domains/lv-1/vmlinuz"
    assert [d.find("source").get("file") for d in dom.findall("devices/disk")] == [f"{env.dir}/domains/lv-1/disk.img"]
    assert "virsh -c xen:///system start lv-1" in cp.stdout

    rec = json.loads(env.run("lsxenvm", "--json", "lv-1", check=True).stdout)
    assert rec["toolstack"] == "libvirt" and rec["libvirt_state"] == "shut off" and rec["autostart"] is None
    assert "libvirt shut off" in env.run("lsxenvm", "lv-1", check=True).stdout

    rm = env.run("rmxenvm", "lv-1", "--yes")
    assert rm.returncode == 0, rm.stdout + rm.stderr
    assert "domuuid lv-1" in calls(state), "the undo asked which domain it is before undefining it"
    changes = [c for c in calls(state) if not c.startswith(("list", "version", "domstate", "domuuid"))]
    assert changes[-2:] == ["autostart --disable lv-1", "undefine --managed-save lv-1"], changes  # newest first
    nothing_left(env, state, "lv-1")


def test_unreachable_libvirtd_is_one_fatal_and_nothing_made(lv, monkeypatch):
    env, state = lv
    monkeypatch.setenv("FAKE_VIRSH_DOWN", "1")
    cp = env.mk("tiny", "--hostname", "lv-2", *OPTS, "--toolstack", "libvirt", "--dir", env.dir, "--output", env.output)
    assert cp.returncode != 0
    fatal = [line for line in cp.stderr.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert "libvirtd is not reachable at xen:///system" in fatal[0] and "systemctl start libvirtd" in fatal[0]
    assert calls(state) == ["version"]  # asked once, refused before anything was made
    nothing_left(env, state, "lv-2")


def test_a_refused_definition_is_rolled_back(lv, monkeypatch):
    env, state = lv
    monkeypatch.setenv("FAKE_VIRSH_REFUSE", "1")
    cp = env.mk("tiny", "--hostname", "lv-3", *OPTS, "--toolstack", "libvirt", "--autostart", "--dir", env.dir,
                "--output", env.output)
    assert cp.returncode != 0 and "step 'define' failed" in cp.stderr and "unsupported configuration" in cp.stderr, \
        cp.stderr
    assert "autostart lv-3" not in calls(state)
    nothing_left(env, state, "lv-3")


def test_a_deploy_killed_after_its_define_is_removed_by_rmxenvm(lv, monkeypatch):
    """The crash case: the journal names the definition, so si_rmxenvm undefines it."""
    env, state = lv
    monkeypatch.setenv("FAKE_VIRSH_HANG", "1")
    p = env.popen_mk("tiny", "--hostname", "lv-4", *OPTS, "--toolstack", "libvirt", "--dir", env.dir,
                     "--output", env.output)
    deadline = time.monotonic() + 300
    while not (state / "hung").exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "never defined"
        time.sleep(0.2)
    p.kill()
    p.communicate()
    os.kill(int((state / "hung").read_text()), signal.SIGKILL)
    (state / "hung").unlink()
    assert (state / "defined" / "lv-4.xml").exists()
    monkeypatch.delenv("FAKE_VIRSH_HANG")
    ls = json.loads(env.run("lsxenvm", "--json", "lv-4", check=True).stdout)
    assert not ls["complete"]
    rm = env.run("rmxenvm", "lv-4", "--yes")
    assert rm.returncode == 0, rm.stdout + rm.stderr
    assert calls(state)[-1] == "undefine --managed-save lv-4"
    nothing_left(env, state, "lv-4")


def test_rmxenvm_with_libvirtd_away_is_one_fatal_and_removes_nothing(lv, monkeypatch):
    """Without libvirtd the undefine cannot happen: si_rmxenvm refuses before it removes anything
    (not the disks first, then a generic 'could not remove all'), naming libvirtd and its start."""
    env, state = lv
    cp = env.mk("tiny", "--hostname", "lv-6", *OPTS, "--toolstack", "libvirt", "--autostart", "--dir", env.dir,
                "--output", env.output)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    made = sorted(os.listdir(env.output)), sorted(os.listdir(f"{env.dir}/domains/lv-6"))
    journal = open(f"{env.state}/vms/lv-6.journal").read()
    monkeypatch.setenv("FAKE_VIRSH_DOWN", "1")
    before = len(calls(state))
    rm = env.run("rmxenvm", "lv-6", "--yes")
    fatal = [line for line in rm.stderr.splitlines() if "FATAL" in line]
    assert rm.returncode != 0 and len(fatal) == 1 and "Traceback" not in rm.stderr, rm.stderr
    assert "libvirtd is not reachable at xen:///system" in fatal[0] and "nothing was removed" in fatal[0], fatal
    assert "systemctl start libvirtd" in fatal[0] and "si_rmxenvm lv-6 again" in fatal[0], fatal
    assert calls(state)[before:] == ["version"], "asked libvirtd once, before any undo"
    assert (sorted(os.listdir(env.output)), sorted(os.listdir(f"{env.dir}/domains/lv-6"))) == made
    assert open(f"{env.state}/vms/lv-6.journal").read() == journal
    assert (state / "defined" / "lv-6.xml").exists() and (state / "defined" / "lv-6.autostart").exists()
    monkeypatch.delenv("FAKE_VIRSH_DOWN")
    rm = env.run("rmxenvm", "lv-6", "--yes")  # libvirtd back: removed whole
    assert rm.returncode == 0, rm.stdout + rm.stderr
    nothing_left(env, state, "lv-6")


def test_the_real_virsh_without_libvirtd_is_one_fatal(tmp_path, as_root):
    """The same refusal with the REAL virsh (libvirt-clients) where no libvirtd runs, as on this
    CI host: what an admin without libvirt-daemon-driver-xen sees."""
    virsh = shutil.which("virsh")
    require(virsh is not None, "virsh (apt-get install libvirt-clients) is needed")
    if subprocess.run([virsh, "-c", "xen:///system", "version"], capture_output=True).returncode == 0:
        pytest.skip("libvirtd's Xen driver answers here (a dom0 with libvirt): the refusal cannot be seen")
    images = tmp_path / "images"
    tiny_image(images)
    env = make_env(tmp_path / "e", str(images))
    cp = env.mk("tiny", "--hostname", "lv-5", *OPTS, "--toolstack", "libvirt", "--dir", env.dir, "--output", env.output)
    fatal = [line for line in cp.stderr.splitlines() if "FATAL" in line]
    assert cp.returncode != 0 and len(fatal) == 1 and "Traceback" not in cp.stderr, cp.stderr
    assert "libvirtd is not reachable at xen:///system" in fatal[0] and "libvirt-daemon-driver-xen" in fatal[0]
    assert not os.listdir(env.output) and not os.listdir(env.dir) and not os.path.exists(f"{env.state}/vms/lv-5.journal")


def test_a_domain_libvirt_has_already_is_never_taken_over(lv):
    """The admin's own domain of that name: one FATAL before anything is made (a rollback's undefine
    would remove it), and its definition untouched."""
    env, state = lv
    (state / "defined").mkdir(exist_ok=True)
    theirs = "<domain type='xen'><name>lv-5</name><uuid>0f0e0d0c-0000-4000-8000-000000000005</uuid></domain>"
    (state / "defined" / "lv-5.xml").write_text(theirs)
    cp = env.mk("tiny", "--hostname", "lv-5", *OPTS, "--toolstack", "libvirt", "--dir", env.dir, "--output", env.output)
    fatal = [line for line in cp.stderr.splitlines() if "FATAL" in line]
    assert cp.returncode != 0 and len(fatal) == 1, cp.stderr
    assert "libvirt already has a domain 'lv-5' that si-xen did not make" in fatal[0], fatal
    assert (state / "defined" / "lv-5.xml").read_text() == theirs
    assert not [c for c in calls(state) if c.startswith(("define", "undefine"))]
    assert not os.path.exists(f"{env.dir}/domains/lv-5") and not os.path.exists(f"{env.state}/vms/lv-5.journal")
    # si-xen's VM whose domain the admin replaced since (another uuid): --force takes it over no more
    (state / "defined" / "lv-5.xml").unlink()
    deployed(env, state, "lv-5")
    (state / "defined" / "lv-5.xml").write_text(theirs)
    cp = env.mk("tiny", "--hostname", "lv-5", *OPTS, "--toolstack", "libvirt", "--dir", env.dir, "--output",
                env.output, "--force", "--yes")
    fatal = [line for line in cp.stderr.splitlines() if "FATAL" in line]
    assert cp.returncode != 0 and len(fatal) == 1 and "that si-xen did not make" in fatal[0], cp.stderr
    assert (state / "defined" / "lv-5.xml").read_text() == theirs and os.path.exists(f"{env.state}/vms/lv-5.journal")
    env.run("rmxenvm", "lv-5", "--yes", check=True)  # si-xen's VM goes; the admin's domain stays
    assert (state / "defined" / "lv-5.xml").read_text() == theirs


def history(state) -> list[str]:
    h = state / "history"
    return [(h / n).read_text() for n in sorted(os.listdir(h))] if h.exists() else []


def journal_of(env, name) -> list[str]:
    """The journal's lines but its step lines (which say when, not what)."""
    return [x for x in open(f"{env.state}/vms/{name}.journal") if not x.startswith('{"step"')]


def deployed(env, state, name):
    cp = env.mk("tiny", "--hostname", name, *OPTS, "--toolstack", "libvirt", "--autostart", "--dir", env.dir,
                "--output", env.output)
    assert cp.returncode == 0, cp.stdout + cp.stderr
    return (state / "defined" / f"{name}.xml").read_text()


def test_rebuild_redefines_the_same_domain(lv):
    """--rebuild of a libvirt VM: its XML re-rendered (here with more memory) and defined over the
    domain libvirt has (the same name and uuid), its old definition saved first; autostart kept;
    the journal's definition a plain one again, which si_rmxenvm undefines."""
    env, state = lv
    old = deployed(env, state, "lv-7")
    cp = env.mk("--rebuild", "lv-7", "--memory", "768M")
    assert cp.returncode == 0, cp.stdout + cp.stderr
    xml = f"{env.output}/lv-7.xml"
    now = (state / "defined" / "lv-7.xml").read_text()
    assert now == open(xml).read() and now != old and "<memory unit='MiB'>768</memory>" in now
    assert ET.fromstring(now).findtext("uuid") == ET.fromstring(old).findtext("uuid")
    assert (state / "defined" / "lv-7.autostart").exists()
    made = calls(state)
    assert not [c for c in made if c.startswith("undefine")], made
    last = len(made) - 1 - made[::-1].index("define " + xml)
    assert made[last - 2:last] == ["dumpxml --inactive --security-info lv-7", "dominfo lv-7"], made  # saved first
    require(shutil.which("virt-xml-validate") and shutil.which("xmllint"), "virt-xml-validate needed")
    v = subprocess.run(["virt-xml-validate", xml, "domain"], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    kinds = [json.loads(x)["made"]["kind"] for x in journal_of(env, "lv-7") if x.startswith('{"made"')]
    assert kinds[-2:] == ["libvirt-domain", "libvirt-autostart"], kinds
    assert "old_xml" not in "".join(journal_of(env, "lv-7")), "the old definition leaves the journal once rebuilt"
    assert not [n for n in os.listdir(env.output) if "si-old" in n]
    rm = env.run("rmxenvm", "lv-7", "--yes")
    assert rm.returncode == 0, rm.stdout + rm.stderr
    nothing_left(env, state, "lv-7")


def test_a_failed_rebuild_keeps_the_old_definition(lv, monkeypatch):
    """libvirt refuses the new XML: the undo defines the old one again (never an undefine), the
    XML file and journal are the old ones, autostart as it was."""
    env, state = lv
    old = deployed(env, state, "lv-8")
    xml = f"{env.output}/lv-8.xml"
    file_before, journal_before = open(xml).read(), journal_of(env, "lv-8")
    monkeypatch.setenv("FAKE_VIRSH_REFUSE", xml)
    before = len(calls(state))
    cp = env.mk("--rebuild", "lv-8", "--memory", "768M")
    fatal = [x for x in cp.stderr.splitlines() if x.startswith("FATAL")]
    assert cp.returncode != 0 and len(fatal) == 1 and "VM 'lv-8' is as it was" in fatal[0], cp.stderr
    assert "unsupported configuration" in fatal[0], fatal
    assert (state / "defined" / "lv-8.xml").read_text() == old and history(state)[-1] == old
    assert (state / "defined" / "lv-8.autostart").exists()
    changes = [c for c in calls(state)[before:] if c.startswith(("define", "undefine", "autostart"))]
    assert changes[0] == "define " + xml and changes[1].startswith("define ") and changes[1] != changes[0], changes
    assert changes[2:] == ["autostart lv-8"], changes  # the old one defined again, with its autostart as it was
    assert open(xml).read() == file_before and journal_of(env, "lv-8") == journal_before
    monkeypatch.delenv("FAKE_VIRSH_REFUSE")
    rm = env.run("rmxenvm", "lv-8", "--yes")
    assert rm.returncode == 0, rm.stdout + rm.stderr
    nothing_left(env, state, "lv-8")


def test_a_rebuild_killed_after_its_define_is_put_back_by_the_next(lv, monkeypatch):
    """A crash after the redefinition (SIGKILL as the record step starts): the next --rebuild first
    defines the old definition again from the journal, then rebuilds; no undefine ever."""
    env, state = lv
    old = deployed(env, state, "lv-9")
    monkeypatch.setenv("SI_XEN_KILL_AT", "record")
    assert env.mk("--rebuild", "lv-9", "--memory", "768M").returncode == -9
    monkeypatch.delenv("SI_XEN_KILL_AT")
    assert "<memory unit='MiB'>768</memory>" in (state / "defined" / "lv-9.xml").read_text()
    cp = env.mk("--rebuild", "lv-9")
    assert cp.returncode == 0 and "an earlier rebuild" in cp.stderr, cp.stdout + cp.stderr
    defined = history(state)
    assert len(defined) == 4 and defined[2] == old, "deploy, killed rebuild, the old one again, the rebuild"
    assert "<memory unit='MiB'>512</memory>" in defined[3] and defined[3] == open(f"{env.output}/lv-9.xml").read()
    assert not [c for c in calls(state) if c.startswith("undefine")]
    assert (state / "defined" / "lv-9.autostart").exists()
    rm = env.run("rmxenvm", "lv-9", "--yes")
    assert rm.returncode == 0, rm.stdout + rm.stderr
    nothing_left(env, state, "lv-9")


def test_an_update_whose_kernel_drops_or_gains_its_initramfs_redefines_the_initrd(lv, monkeypatch):
    """The definition names BOOT_DIR/vmlinuz and initrd.img: a new kernel under those names needs
    nothing of libvirt; one without an initramfs (and then with one again) has the domain's <initrd>
    redefined, in libvirt's definition and the XML beside the config. libvirtd away: one FATAL first."""
    from .test_update_kernel import NEW, next_kernel

    env, state = lv
    deployed(env, state, "lv-10")
    image, xml = os.path.join(os.path.dirname(env.base), "images", "tiny"), f"{env.output}/lv-10.xml"
    initrd = f"{env.dir}/domains/lv-10/initrd.img"
    assert ET.parse(xml).getroot().findtext("os/initrd") == initrd
    next_kernel(image, False)
    monkeypatch.setenv("FAKE_VIRSH_DOWN", "1")
    down = env.run("updatexenvm", "lv-10")
    fatal = [x for x in down.stderr.splitlines() if x.startswith("FATAL")]
    assert down.returncode != 0 and len(fatal) == 1 and "libvirtd is not reachable" in fatal[0], down.stderr
    assert "comes without an initramfs now" in fatal[0] and "nothing was changed" in fatal[0], fatal
    assert os.path.exists(initrd) and ET.parse(xml).getroot().findtext("os/initrd") == initrd
    monkeypatch.delenv("FAKE_VIRSH_DOWN")
    env.run("updatexenvm", "lv-10", check=True)
    defined = (state / "defined" / "lv-10.xml").read_text()
    assert "<initrd>" not in defined and "<initrd>" not in open(xml).read() and not os.path.exists(initrd)
    assert f"<kernel>{env.dir}/domains/lv-10/vmlinuz</kernel>" in defined
    n = len(history(state))
    next_kernel(image, True)
    for f in glob.glob(f"{image}/boot/*-{NEW}"):
        os.rename(f, f + ".1")  # a newer version
    env.run("updatexenvm", "lv-10", check=True)
    assert len(history(state)) == n + 1
    assert ET.fromstring((state / "defined" / "lv-10.xml").read_text()).findtext("os/initrd") == initrd
    assert ET.parse(xml).getroot().findtext("os/initrd") == initrd and os.path.exists(initrd)
    require(shutil.which("virt-xml-validate") and shutil.which("xmllint"), "virt-xml-validate needed")
    v = subprocess.run(["virt-xml-validate", xml, "domain"], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    env.run("rmxenvm", "lv-10", "--yes", check=True)
    nothing_left(env, state, "lv-10")


def test_a_managed_save_image_refuses_rebuild_and_update_and_goes_with_the_vm(lv):
    """libvirt holds the VM's memory (virsh managedsave, libvirt-guests' suspend at shutdown), which
    its next start resumes: a rebuild or an update under it would resume the old memory over new
    filesystems, so each is one FATAL that changes nothing; si_rmxenvm removes it with the VM
    (libvirt refuses a plain undefine while it exists)."""
    env, state = lv
    old = deployed(env, state, "lv-5")
    (state / "defined" / "lv-5.managedsave").touch()
    for cmd in (lambda: env.mk("--rebuild", "lv-5", "--memory", "768M"), lambda: env.run("updatexenvm", "lv-5")):
        cp = cmd()
        fatal = [x for x in cp.stderr.splitlines() if x.startswith("FATAL")]
        assert cp.returncode != 0 and len(fatal) == 1 and "managed save image of VM 'lv-5'" in fatal[0], cp.stderr
        assert "nothing was changed" in fatal[0] and "managedsave-remove lv-5" in fatal[0]
        assert (state / "defined" / "lv-5.xml").read_text() == old
    rm = env.run("rmxenvm", "lv-5", "--yes")
    assert rm.returncode == 0, rm.stdout + rm.stderr
    assert "undefine --managed-save lv-5" in calls(state)
    nothing_left(env, state, "lv-5")


def test_an_xml_file_already_there_is_never_overwritten(lv):
    """The admin's XML where si_mkxenvm would write its own (a `virsh dumpxml` kept as NAME.xml):
    one FATAL, the file as it was, nothing defined."""
    env, state = lv
    theirs = f"{env.output}/lv-6.xml"
    os.makedirs(env.output, exist_ok=True)
    with open(theirs, "w") as f:
        f.write("<domain type='xen'><name>lv-6</name></domain>\n")
    cp = env.mk("tiny", "--hostname", "lv-6", *OPTS, "--toolstack", "libvirt", "--dir", env.dir, "--output", env.output)
    fatal = [x for x in cp.stderr.splitlines() if x.startswith("FATAL")]
    assert cp.returncode != 0 and len(fatal) == 1 and f"libvirt XML {theirs} already exists" in fatal[0], cp.stderr
    assert open(theirs).read() == "<domain type='xen'><name>lv-6</name></domain>\n"
    assert not [c for c in calls(state) if c.startswith("define")]
    assert not os.path.exists(f"{env.state}/vms/lv-6.journal")
