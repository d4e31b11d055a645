"""SystemImager's override order (the installer's OVERRIDES="IMAGE $GROUP_OVERRIDES $HOSTNAME
--overrides"), which of them are laid, and the image name a VM records."""

from __future__ import annotations

import pytest

from si_xen.errors import Fatal
from si_xen.fixups.spec import spec_from_plan
from si_xen.fixups.xentools import spec_from_env
from si_xen.image import source
from si_xen.image.source import GROUP as G
from si_xen.image.source import HOST as H
from si_xen.image.source import IMAGE as IMG
from si_xen.image.source import NAMED as N
from tests.unit.fixups.test_spec import plan
from tests.unit.fixups.xtenv import env_from_spec


def test_order_is_image_groups_host_then_named_by_the_short_name():
    assert source.order("debian12", ["all", "web"], ["web01.example.org"], ["debug"]) == [
        ("debian12", IMG), ("all", G), ("web", G), ("web01", H), ("debug", N)]


def test_a_name_given_twice_is_laid_once_at_its_last_place_and_named_stays_named():
    # laid A, B, A gives the tree of B, A: the last place keeps SystemImager's result
    assert source.order("img", ["site", "web"], ["h1"], ["site"]) == [("img", IMG), ("web", G), ("h1", H), ("site", N)]
    assert source.order("img", [], ["img"], []) == [("img", H)]
    assert source.order("img", [], ["h1"], ["img", "img"]) == [("h1", H), ("img", N)]


def test_only_overrides_that_are_there_are_laid():
    there = {"img": True, "web": True, "h1": False, "x": True, "empty": False}.get
    said: list[str] = []
    wanted = [("img", IMG), ("gone", G), ("web", G), ("h1", H), ("nohost", H), ("empty", N), ("x", N)]
    assert source.present(wanted, there, "on S", "fix", False, said.append) == [
        ("img", IMG), ("web", G), ("empty", N), ("x", N)]
    assert said == ["Override 'gone' (cluster.txt) not found on S: skipped, as SystemImager does"]


def test_a_named_override_that_is_not_there_is_a_fatal():
    with pytest.raises(Fatal, match="override 'nosuch' not found on S") as e:
        source.present([("img", IMG), ("nosuch", N)], {"img": True}.get, "on S", "look there", False, print)
    assert e.value.fix == "look there, or drop --override nosuch"


def test_a_host_override_in_a_batch_is_refused():
    with pytest.raises(Fatal, match="override 'web2' .named like the host. is there on S, but a batch"):
        source.present([("web1", H), ("web2", H)], {"web2": True}.get, "on S", "f", True, print)
    assert source.present([("web1", H)], {}.get, "on S", "f", True, print) == []


def test_the_summary_lists_each_override_in_order_and_where_from():
    said: list[str] = []
    laid = [("img", IMG), ("x", N)]
    source.report(said.append, "img", laid, [3, 1], lambda n: f"rsync://s/overrides/{n}")
    assert said == ["Override 'img' (named like the image, 1 of 2) from rsync://s/overrides/img: 3 files copied over image 'img'",
                    "Override 'x' (--override, 2 of 2) from rsync://s/overrides/x: 1 files copied over image 'img'"]
    said.clear()
    source.report(said.append, "img", laid, [], str)
    assert all("already in the cached view" in s for s in said) and len(said) == 2


@pytest.mark.parametrize("path", ["/c/images/s_873/debian12/gen-3", "/c/images/s_873/debian12/view-3-0123abcd",
                                  "/c/images/local/debian12.1a2b3c4d/view-0123abcd"])
def test_image_last_synced_to_names_the_image_not_the_cache_dir(path):
    s = spec_from_plan(plan(image_name="debian12", image_path=path))
    assert s.image_name == "debian12" and s.image_source == path
    assert spec_from_env(env_from_spec(s)) == s, "the name reaches a hook run through the environment"
    assert spec_from_plan(plan()).image_name == "img", "an image read from its own directory"
