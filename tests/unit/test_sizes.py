import pytest

from si_xen.errors import Fatal
from si_xen.sizes import human, parse_mib


@pytest.mark.parametrize(
    "text,mib",
    [("256M", 256), ("2G", 2048), ("2Gb", 2048), ("2GB", 2048), ("2048", 2048), ("128Mb", 128),
     ("512MiB", 512), ("1.5G", 1536), ("1T", 1048576), ("4096k", 4), (" 64m ", 64)],
)
def test_sizes_admins_type(text, mib):
    assert parse_mib(text) == mib


@pytest.mark.parametrize("text", ["", "G", "2X", "-1G", "0", "1.3M", "2 G B", "1k"])
def test_bad_sizes_are_fatal_and_name_the_value(text):
    with pytest.raises(Fatal) as e:
        parse_mib(text, "--size")
    assert "--size" in str(e.value)


def test_human():
    assert human(2048) == "2G" and human(128) == "128M" and human(1536) == "1536M"
