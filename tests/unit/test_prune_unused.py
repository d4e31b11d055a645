"""After a VM's generation changed: what no VM needs is pruned, and a failure to prune only warns
(the VM is done by then: an update or rebuild that worked never reports a failure for it); an
update's walk becomes the image's last unless a deploy remembered a newer one meanwhile."""
from __future__ import annotations

import os

from si_xen import journal, prune
from si_xen.image import survey
from si_xen.record import VmRecord


def vm(state: str, name: str, fpr: str) -> None:
    j = journal.Journal(state, name, VmRecord.from_json({"name": name, "pid": 1}))
    j.finish(VmRecord.from_json({"name": name, "image": "deb", "image_fingerprint": fpr}))
    j.close()


def test_another_vms_damaged_journal_is_a_warning_not_a_failure(tmp_path):
    state = str(tmp_path)
    vm(state, "web1", "aaaa")
    vm(state, "web2", "bbbb")
    with open(journal.load(state, "web2").path, "a") as f:
        f.write('{"made": {"kind": "fi\n{"step": "copy"}\n')  # a corrupt middle: load() raises Fatal
    warned = []
    prune.unused(state, warned.append)
    assert len(warned) == 1 and "corrupt" in warned[0] and "not pruned" in warned[0]
    os.unlink(os.path.join(journal.vm_dir(state), "web2.journal"))
    warned.clear()
    prune.unused(state, warned.append)
    assert warned == []


def test_an_update_replaces_only_the_walk_of_the_generation_it_left(tmp_path):
    facts, image = str(tmp_path / "facts"), str(tmp_path / "img")
    g1, g2, g3 = (survey.Survey(f, (), []) for f in ("g1", "g2", "g3"))
    survey.remember(facts, image, g2, over="g1")  # none yet: the update's
    assert survey.remembered(facts, image).fingerprint == "g2"
    survey.remember(facts, image, g1)
    survey.remember(facts, image, g2, over="g1")  # the VM's old generation: replaced
    assert survey.remembered(facts, image).fingerprint == "g2"
    survey.remember(facts, image, g3)  # a deploy walked a newer one while the update ran
    survey.remember(facts, image, g2, over="g1")
    assert survey.remembered(facts, image).fingerprint == "g3"
