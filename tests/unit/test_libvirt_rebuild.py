"""A libvirt VM rebuilt and updated, against a faked virsh: the rebuild's redefinition journaled
with the old definition (its undo defines that again, never undefines), kept as a plain
definition once recorded; an update's initramfs gained or lost redefines ``<initrd>``."""

import os
from types import SimpleNamespace

import pytest

from si_xen import deploy, journal, rebuild, service, updateboot
from si_xen.errors import Fatal
from si_xen.made import Aside, File, LibvirtAutostart, LibvirtDefinition, LibvirtRedefinition
from si_xen.record import VmRecord
from si_xen.report import Reporter
from si_xen.toolstack import libvirt

VIRSH = "/usr/bin/virsh"
V = [VIRSH, "-c", "xen:///system"]
UUID = "5b7e1d0c-0000-4000-8000-000000000001"
OLD = ("<domain type='xen'>\n  <name>vm1</name>\n  <uuid>" + UUID + "</uuid>\n  <os>\n"
       "    <type arch='x86_64' machine='xenpv'>linux</type>\n    <kernel>/srv/domains/vm1/vmlinuz</kernel>\n"
       "    <initrd>/srv/domains/vm1/initrd.img</initrd>\n    <cmdline>root=/dev/xvda1 ro</cmdline>\n  </os>\n"
       "  <graphics type='vnc' passwd='s3cret'/>\n</domain>\n")
DOMINFO = "Id:             -\nName:           vm1\nUUID:           {}\nAutostart:      {}\n"


@pytest.fixture
def lv(monkeypatch):
    ts = libvirt.Libvirt(VIRSH)
    monkeypatch.setattr(libvirt, "find_virsh", lambda: ts)
    return ts


def held(fp, xml=OLD, autostart="enable"):
    """libvirt's definition of vm1 as dumpxml and dominfo say it."""
    fp.register([*V, "dumpxml", "--inactive", "--security-info", "vm1"], stdout=xml)
    fp.register([*V, "dominfo", "vm1"], stdout=DOMINFO.format(UUID, autostart))


def defines(fp) -> list[str]:
    """What each ``virsh define`` defined (a temp file's content read as it ran)."""
    got = []
    fp.register([*V, "define", fp.any(min=1, max=1)], occurrences=10,
                callback=lambda p: got.append(open(p.args[-1]).read()))
    return got


def context(tmp_path, autostart=True, old=True):
    j = journal.Journal(str(tmp_path), "vm1", VmRecord("vm1"))
    plan = SimpleNamespace(hostname="vm1", cfg_path=str(tmp_path / "vm1.cfg"),
                           net=SimpleNamespace(mac="00:16:3e:00:00:01"),
                           activation=SimpleNamespace(toolstack="libvirt", autostart=autostart))
    (tmp_path / "vm1.xml").write_text("<domain>new</domain>\n")
    return SimpleNamespace(plan=plan, old=object() if old else None, journal=j, rep=Reporter(quiet=True), autostart=None)


def test_a_rebuilds_define_journals_the_old_definition_first(fp, lv, tmp_path):
    held(fp)
    got = defines(fp)
    c = context(tmp_path)
    deploy._define(c)
    thing = c.journal.state.things[-1]
    assert isinstance(thing, LibvirtRedefinition) and thing.old_xml == OLD and thing.old_autostart
    assert thing.uuid == deploy.domain.domain_uuid(c.plan) and got == ["<domain>new</domain>\n"]
    assert not [x for x in fp.calls if "autostart" in x or "undefine" in x], "autostart left as it was"
    c.journal.close()
    back = journal.load(str(tmp_path), "vm1").things[-1]  # as a crash's recovery reads it
    assert back == thing


def test_a_rebuild_without_autostart_turns_libvirts_off_and_its_undo_on_again(fp, lv, tmp_path):
    held(fp)
    got = defines(fp)
    fp.register([*V, "list", "--all", "--name"], stdout="vm1\n")
    fp.register([*V, "autostart", "--disable", "vm1"])
    c = context(tmp_path, autostart=False)
    deploy._define(c)
    assert [*V, "autostart", "--disable", "vm1"] in fp.calls
    thing = c.journal.state.things[-1]
    fp.register([*V, "domuuid", "vm1"], stdout=thing.uuid + "\n")
    fp.register([*V, "autostart", "vm1"])
    assert journal.undo([thing]) == []
    assert got[-1] == OLD, "the old definition, secrets and all, defined again"
    assert fp.calls[-1] == [*V, "autostart", "vm1"] and not [x for x in fp.calls if "undefine" in x]


def test_a_fresh_deploy_and_a_rebuild_libvirt_lost_define_plainly(fp, lv, tmp_path):
    fp.register([*V, "define", str(tmp_path / "vm1.xml")], occurrences=2)
    c = context(tmp_path, old=False)
    deploy._define(c)
    assert type(c.journal.state.things[-1]) is LibvirtDefinition and not [x for x in fp.calls if "dumpxml" in x]
    fp.register([*V, "dumpxml", "--inactive", "--security-info", "vm1"], returncode=1,
                stderr="error: failed to get domain 'vm1'\nerror: Domain not found\n")
    c = context(tmp_path)
    deploy._define(c)  # undefined by the admin since: defined anew, undone by an undefine
    assert type(c.journal.state.things[-1]) is LibvirtDefinition


def test_definition_with_libvirtd_away_is_an_error_not_a_missing_domain(fp, lv):
    fp.register([*V, "dumpxml", "--inactive", "--security-info", "vm1"], returncode=1,
                stderr="error: failed to connect to the hypervisor\n")
    with pytest.raises(OSError, match="failed to connect"):
        lv.definition("vm1")


def test_the_undo_leaves_a_domain_of_another_uuid_alone(fp, lv):
    fp.register([*V, "domuuid", "vm1"], stdout="0f0e0d0c-0000-4000-8000-000000000099\n")
    assert journal.undo([LibvirtRedefinition("vm1", UUID, OLD, True)]) == []
    assert [x[3] for x in fp.calls] == ["domuuid"]


def test_a_rolled_back_rebuild_has_the_old_definition_and_journal(fp, lv, tmp_path):
    """journal.restore (a failure's rollback, the next --rebuild after a crash): the new XML file
    goes, the old one comes back from aside, libvirt gets the old definition; no undefine."""
    s, xml = str(tmp_path / "state"), tmp_path / "vm1.xml"
    xml.write_text("old xml")
    j = journal.Journal(s, "vm1", VmRecord.from_json({"name": "vm1", "pid": 1}))
    for t in (File(str(xml)), LibvirtDefinition("vm1", UUID), LibvirtAutostart("vm1")):
        j.made(t)
    j.finish(VmRecord("vm1", "deb", toolstack="libvirt", request={"hostnames": ["vm1"]}))
    j.close()
    old = journal.load(s, "vm1")
    j = journal.Journal.replacing(s, "vm1", VmRecord.from_json({"name": "vm1", "pid": 2}), old)
    j.made(Aside(str(xml), Aside.name_for(str(xml))), os.rename, str(xml), Aside.name_for(str(xml)))
    j.made(File(str(xml)), xml.write_text, "new xml")
    j.made(LibvirtRedefinition("vm1", UUID, OLD, True))
    j.made(LibvirtAutostart("vm1"))
    got = defines(fp)
    fp.register([*V, "list", "--all", "--name"], stdout="vm1\n")
    fp.register([*V, "autostart", fp.any()], occurrences=2)
    fp.register([*V, "domuuid", "vm1"], stdout=UUID + "\n")
    assert j.rollback() == []
    assert got == [OLD] and xml.read_text() == "old xml"
    assert [x[3:] for x in fp.calls if x[3] == "autostart"] == [["autostart", "--disable", "vm1"], ["autostart", "vm1"]]
    st = journal.load(s, "vm1")
    assert st.replaces is None and st.things == old.things


def test_once_recorded_the_redefinition_is_the_vms_definition(tmp_path):
    s = str(tmp_path / "state")
    j = journal.Journal(s, "vm1", VmRecord.from_json({"name": "vm1", "pid": 1}))
    j.made(LibvirtDefinition("vm1", UUID))
    j.finish(VmRecord("vm1", "deb", toolstack="libvirt"))
    j.close()
    j = journal.Journal.replacing(s, "vm1", VmRecord.from_json({"name": "vm1", "pid": 2}), journal.load(s, "vm1"))
    j.made(LibvirtRedefinition("vm1", UUID, OLD, True))
    j.made(LibvirtAutostart("vm1"))
    j.finish(VmRecord("vm1", "deb", toolstack="libvirt", rebuilt="now"))
    j.close()
    rebuild.discard(s, journal.load(s, "vm1"))
    st = journal.load(s, "vm1")
    assert st.things == [LibvirtDefinition("vm1", UUID), LibvirtAutostart("vm1")], "si_rmxenvm undefines it"
    assert "s3cret" not in open(st.path).read(), "the old definition's secrets leave the journal with it"


def test_a_rebuild_keeps_the_toolstack_and_libvirts_domain(fp, lv, monkeypatch):
    plan = SimpleNamespace(hostname="vm1", net=SimpleNamespace(mac="00:16:3e:00:00:01"),
                           activation=SimpleNamespace(toolstack="xl"))
    with pytest.raises(Fatal, match="is libvirt's, and a rebuild keeps its toolstack"):
        service._same_toolstack(VmRecord("vm1", toolstack="libvirt"), plan)
    plan.activation.toolstack = "libvirt"
    with pytest.raises(Fatal, match="is not libvirt's"):
        service._same_toolstack(VmRecord("vm1", toolstack="xl"), plan)
    fp.register([*V, "version"], occurrences=2)
    fp.register([*V, "domuuid", "vm1"], stdout="0f0e0d0c-0000-4000-8000-000000000099\n")
    with pytest.raises(Fatal, match="not the one si-xen defined"):
        service._same_toolstack(VmRecord("vm1", toolstack="libvirt"), plan)
    fp.register([*V, "version"], occurrences=2)
    fp.register([*V, "domuuid", "vm1"], stdout=deploy.domain.domain_uuid(plan) + "\n", occurrences=2)
    # a managed save image (virsh managedsave, libvirt-guests' suspend): its memory would resume over new disks
    fp.register([*V, "dominfo", "vm1"], stdout="Name:           vm1\nState:          shut off\nManaged save:   yes\n")
    with pytest.raises(Fatal, match="managed save image of VM 'vm1'.* nothing was changed") as e:
        service._same_toolstack(VmRecord("vm1", toolstack="libvirt"), plan)
    assert "managedsave-remove vm1" in e.value.fix
    fp.register([*V, "dominfo", "vm1"], stdout="Name:           vm1\nState:          shut off\nManaged save:   no\n")
    service._same_toolstack(VmRecord("vm1", toolstack="libvirt"), plan)  # ours, no saved memory: rebuilt
    # --mac X would be another domain (its uuid is made from the MAC): refused for what it is
    with pytest.raises(Fatal, match="keeps its uuid .* --mac 00:16:3e:00:00:01 would make it another domain"):
        service._same_toolstack(VmRecord("vm1", toolstack="libvirt", mac="00:16:3e:00:00:02"), plan)


def test_with_initrd_adds_replaces_and_drops_the_one_line():
    none = libvirt.with_initrd(OLD, "")
    assert "<initrd>" not in none and "<kernel>/srv/domains/vm1/vmlinuz</kernel>\n    <cmdline>" in none
    assert libvirt.with_initrd(none, "/srv/domains/vm1/initrd.img") == OLD
    assert libvirt.with_initrd(OLD, "/srv/domains/vm1/initrd.img") == OLD
    assert "<initrd>/a&amp;b/initrd.img</initrd>" in libvirt.with_initrd(none, "/a&b/initrd.img")
    assert libvirt.has_initrd(OLD) and not libvirt.has_initrd(none)


def vm(tmp_path, initrd=True, toolstack="libvirt"):
    cfg, xml = tmp_path / "vm1.cfg", tmp_path / "vm1.xml"
    cfg.write_text('kernel      = "/srv/domains/vm1/vmlinuz"\n'
                   + ('ramdisk     = "/srv/domains/vm1/initrd.img"\n' if initrd else ""))
    ours = OLD.replace(UUID, deploy.domain.uuid_of("vm1", MAC))  # the domain si-xen defined
    xml.write_text(ours if initrd else libvirt.with_initrd(ours, ""))
    return SimpleNamespace(name="vm1", toolstack=toolstack, boot="direct", request={}, config=str(cfg), mac=MAC)


MAC = "00:16:3e:00:00:01"


def test_an_update_checks_libvirtd_only_when_the_initramfs_comes_or_goes(fp, lv, tmp_path):
    rec = vm(tmp_path)
    updateboot.check_libvirt(rec, True, "6.1")  # the same files' names: nothing to redefine, nothing asked
    assert not fp.calls
    fp.register([*V, "version"], returncode=1, stderr="error: failed to connect to the hypervisor\n")
    with pytest.raises(Fatal) as e:
        updateboot.check_libvirt(rec, False, "6.1")
    assert "comes without an initramfs now" in e.value.problem and "nothing was changed" in e.value.problem
    assert "si_updatexenvm vm1 again" in e.value.fix
    # libvirtd answers, but the domain is gone, or is another of that name: refused before any change
    for has in ({"returncode": 1, "stderr": "error: failed to get domain 'vm1'\n"}, {"stdout": UUID + "\n"}):
        fp.register([*V, "version"])
        fp.register([*V, "domuuid", "vm1"], **has)
        with pytest.raises(Fatal, match="nothing was changed") as e:
            updateboot.check_libvirt(rec, False, "6.1")
        assert ("has no domain" if "stderr" in has else f"as uuid {UUID}, not the one si-xen defined") in e.value.problem
    fp.register([*V, "version"])
    fp.register([*V, "domuuid", "vm1"], stdout=deploy.domain.uuid_of("vm1", MAC) + "\n")
    updateboot.check_libvirt(rec, False, "6.1")  # libvirtd answers, si-xen's domain: the update goes ahead
    updateboot.check_libvirt(vm(tmp_path, toolstack="xl"), False, "6.1")  # xl: the cfg is rewritten


@pytest.mark.parametrize("had", [True, False])
def test_an_update_redefines_the_initrd_it_gained_or_lost(fp, lv, tmp_path, had):
    rec = vm(tmp_path, initrd=had)
    before = open(libvirt.xml_path(rec.config)).read()
    held(fp, xml=before)
    fp.register([*V, "version"])
    got = defines(fp)
    final = tmp_path / "initrd.img"
    new = tmp_path / ".initrd.img.upd-1"
    new.write_text("new")
    u = SimpleNamespace(rec=rec, kernel_files={str(final): "" if had else str(new)})
    updateboot.put_in_place(u)
    want = libvirt.with_initrd(before, "" if had else str(final))
    assert got == [want] and open(libvirt.xml_path(rec.config)).read() == want
    assert libvirt.has_initrd(want) is not had and ("ramdisk" in open(rec.config).read()) is not had
    n = len(fp.calls)
    new.write_text("new")
    updateboot.put_in_place(u)  # run again (a crash after it): nothing more to define
    assert len(fp.calls) == n


def test_an_update_that_keeps_the_initramfs_asks_libvirt_nothing(fp, lv, tmp_path):
    rec, final, new = vm(tmp_path), tmp_path / "initrd.img", tmp_path / ".initrd.img.upd-1"
    (tmp_path / "vm1.xml").write_text(libvirt.with_initrd(OLD, str(final)))
    new.write_text("new")
    updateboot.put_in_place(SimpleNamespace(rec=rec, kernel_files={str(final): str(new)}))
    assert final.read_text() == "new" and not fp.calls


def test_virsh_is_read_in_the_c_locale_whatever_the_admins_language(monkeypatch, lv):
    """libvirt-l10n translates what si-xen parses (German dominfo: "Automatischer Start: aktivieren"):
    under the admin's LANG a failed rebuild would read every VM as not autostarting and turn its
    autostart off when putting the old definition back. Every virsh si-xen reads runs with LC_ALL=C."""
    seen = []

    def run(argv, ok=(0,), env=None, **kw):
        seen.append((argv[3], env))
        out = DOMINFO.format(UUID, "enable") if argv[3] == "dominfo" else OLD
        return SimpleNamespace(returncode=0, stdout=out, stderr="")

    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    monkeypatch.setattr(libvirt.proc, "run", run)
    assert lv.definition("vm1") == (OLD, True)
    lv.domuuid("vm1")
    assert [c for c, _ in seen] == ["dumpxml", "dominfo", "domuuid"]
    assert all(env == {"LC_ALL": "C"} for _, env in seen), seen


def test_an_update_never_redefines_a_domain_that_is_no_longer_si_xens(fp, lv, tmp_path):
    """Between the update's check and its kernel step the admin defined another domain of the name:
    its definition is left as it is, one FATAL."""
    rec = vm(tmp_path, initrd=False)
    fp.register([*V, "version"])
    held(fp, xml=OLD)  # uuid UUID: not the one si-xen made from the name and MAC
    got = defines(fp)
    with pytest.raises(Fatal, match="no longer the one si-xen defined"):
        updateboot.set_initrd(rec, str(tmp_path / "initrd.img"))
    assert got == [] and "<initrd>" not in open(libvirt.xml_path(rec.config)).read()
