"""The VmRecord: written as JSON by the journal, read back by every command, old and new."""

import json
import os

from si_xen.record import DiskRecord, VmRecord

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "bf63863")


def _entry(name: str, key: str) -> dict:
    with open(os.path.join(GOLDEN, name)) as f:
        return next(e[key] for e in map(json.loads, f) if key in e)


def test_a_record_written_by_bf63863_reads_back_typed_and_writes_the_same_keys():
    old = _entry("bfvm.journal", "record")
    rec = VmRecord.from_json(old)
    assert rec.dhcp and rec.ips == () and rec.memory == 512 and rec.complete
    assert rec.disks[1] == DiskRecord("xvda2", "/", "ext4", "2G", "@ROOT@/disks/domains/bfvm/disk.img")
    assert rec.image_fingerprint == "" and rec.toolstack == "", "what bf63863 did not record takes its default"
    again = rec.to_json()
    assert {k: again[k] for k in old} == old, "every key written then is written the same way now"


def test_a_begin_entry_of_bf63863_is_the_vm_as_planned():
    begun = VmRecord.from_json(_entry("bfcrash.journal", "begin"))
    listed = begun.unfinished("fixups", ["dir /x"])
    assert (listed.name, listed.pid, listed.started, listed.complete, listed.step) == (
        "bfcrash", 2238, "2026-12-04 19:11:18", False, "fixups")


def test_keys_of_a_newer_si_xen_are_kept_and_written_again():
    rec = VmRecord.from_json({"name": "vm", "ips": ["10.0.0.5"], "from_the_future": {"x": 1}})
    assert rec.ips == ("10.0.0.5",) and not rec.dhcp
    assert rec.to_json()["from_the_future"] == {"x": 1} and rec.to_json()["ips"] == ["10.0.0.5"]
    assert VmRecord.from_json(rec.to_json()) == rec


def test_what_an_update_needs_round_trips_through_the_journals_json():
    rec = VmRecord("vm", request={"hostnames": ["vm"], "memory": 512}, source={"server": "s1", "ssh_user": "",
                   "overrides": ["web"]}, owned={"hostname": ("/etc/hostname", "/etc/hosts"), "kernel": ("/lib/modules/6.1/",)},
                   owned_facts={"/etc/hosts": [33188, 0, 0, 120, 1733338000123456789], "/var/lib/random-seed": None})
    d = json.loads(json.dumps(rec.to_json()))
    assert d["owned"] == {"hostname": ["/etc/hostname", "/etc/hosts"], "kernel": ["/lib/modules/6.1/"]}
    assert VmRecord.from_json(d) == rec and VmRecord.from_json(d).owned["kernel"] == ("/lib/modules/6.1/",)


def test_a_record_of_bf63863_lacks_them_all():
    rec = VmRecord.from_json(_entry("bfvm.journal", "record"))
    assert (rec.request, rec.source, rec.owned, rec.owned_facts) == ({}, {}, {}, {})
