"""aside.keep: a golden file kept once, however often the fixups run again."""

import os

from si_xen.fixups import aside
from si_xen.fixups.base import Ctx
from si_xen.guestfs import Guest
from tests.unit.fixups.conftest import STATIC
from tests.unit.fixups.trees import build


def _ctx(root):
    from si_xen.distros import detect

    g = Guest(root)
    return Ctx(g, detect(g), STATIC, log=lambda m: None)


def _write(root, gpath, text):
    with open(os.path.join(root, gpath), "w") as f:
        f.write(text)


def _kept(root):
    top = os.path.join(root, aside.GOLDEN)
    return sorted(os.path.relpath(os.path.join(d, n), top) for d, _, files in os.walk(top) for n in files)


def test_an_identical_kept_copy_is_reused_another_text_gets_the_next_name(tmp_path):
    root = build(tmp_path / "g", "debian12")
    ctx = _ctx(root)
    aside.keep(ctx, "etc/hosts", move=False)
    aside.keep(ctx, "etc/hosts", move=False)
    assert _kept(root) == ["MANIFEST", "etc/hosts"]
    _write(root, "etc/hosts", "127.0.0.1 localhost other\n")
    aside.keep(ctx, "etc/hosts", move=False)
    assert _kept(root) == ["MANIFEST", "etc/hosts", "etc/hosts.1"]
    _write(root, "etc/hosts", "127.0.0.1 localhost other\n")
    aside.keep(ctx, "etc/hosts", move=False)
    assert _kept(root) == ["MANIFEST", "etc/hosts", "etc/hosts.1"]
    assert Guest(root).read_text(f"{aside.GOLDEN}/etc/hosts.1") == "127.0.0.1 localhost other\n"

