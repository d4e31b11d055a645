import pytest

from si_xen.batch import expand, shifted
from si_xen.errors import Fatal


def test_patterns_and_lists():
    assert expand("web[01-03]") == ["web01", "web02", "web03"]
    assert expand("db1,web[8-10].lab") == ["db1", "web8.lab", "web9.lab", "web10.lab"]
    assert expand("solo") == ["solo"]


@pytest.mark.parametrize("spec,msg", [("w[3-1]", "invalid hostname range"), ("a,a", "twice"),
                                      ("w[0-5000]", "invalid hostname range")])
def test_bad_patterns(spec, msg):
    with pytest.raises(Fatal, match=msg):
        expand(spec)


def test_consecutive_addresses_keep_prefix():
    assert shifted(["10.0.0.10/24", "10.0.1.10"], 3) == ["10.0.0.13/24", "10.0.1.13"]
    assert shifted([], 5) == []
