import pytest

from si_xen import config
from si_xen.errors import Fatal


def test_builtin_defaults_without_a_file(tmp_path):
    s = config.load(str(_write(tmp_path, "")), "img")
    assert s.options["memory"] == "512M" and s.paths["state_dir"] == "/var/lib/si-xen"


def _write(tmp_path, text):
    p = tmp_path / "xen.conf"
    p.write_text(text)
    return p


def test_image_section_overrides_defaults_with_interpolation(tmp_path):
    p = _write(tmp_path, "[defaults]\nmemory = 1G\ndir = /srv/xen\n"
                         "[image:centos5]\nmemory = 768M\nboot = pygrub\ndir = ${defaults:dir}/old\n"
                         "[paths]\nstate_dir = /tmp/s\n")
    s = config.load(str(p), "centos5")
    assert (s.options["memory"], s.options["boot"], s.options["dir"]) == ("768M", "pygrub", "/srv/xen/old")
    assert config.load(str(p), "debian12").options["memory"] == "1G"
    assert s.paths["state_dir"] == "/tmp/s"


@pytest.mark.parametrize("text,msg", [
    ("[defaults]\nmemroy = 1G\n", "unknown key 'memroy'"),
    ("[paths]\nstate = /x\n", "unknown key 'state'"),
    ("[defaults]\ndir = ${nowhere:x}\n", "bad interpolation"),
    ("memory = 1G\n", "cannot read config"),
])
def test_bad_config_is_fatal(tmp_path, text, msg):
    with pytest.raises(Fatal, match=msg):
        config.load(str(_write(tmp_path, text)), "img")


def test_explicit_missing_config_is_fatal(tmp_path):
    with pytest.raises(Fatal, match="not found"):
        config.load(str(tmp_path / "none.conf"))


def test_env_names_the_default_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SI_XEN_CONFIG", str(_write(tmp_path, "[defaults]\nvcpus = 4\n")))
    assert config.load().options["vcpus"] == "4"


def test_the_initramfs_cache_follows_cache_dir(tmp_path, monkeypatch):
    """The Xen-sized initramfs files and scans go where [paths] cache_dir says (they were kept in
    /var/cache/si-xen whatever it said); SI_XEN_CACHE still wins (the tests' own cache)."""
    from si_xen import initramfs
    monkeypatch.setattr(initramfs, "_root", None)
    monkeypatch.delenv("SI_XEN_CACHE", raising=False)
    assert initramfs.cache_dir() == "/var/cache/si-xen/initramfs"
    cfg = tmp_path / "xen.conf"
    cfg.write_text(f"[paths]\ncache_dir = {tmp_path}/big\n")
    config.load(str(cfg))
    assert initramfs.cache_dir() == f"{tmp_path}/big/initramfs"
    monkeypatch.setenv("SI_XEN_CACHE", str(tmp_path / "tests"))
    assert initramfs.cache_dir() == f"{tmp_path}/tests/initramfs"
