"""Image lookup the SystemImager way."""

import json

import pytest

from si_xen.errors import Fatal
from si_xen.image.store import list_images, resolve, store_config


def mkimage(path):
    (path / "etc").mkdir(parents=True)
    return path


def test_default_when_no_config(tmp_path):
    cfg = store_config(str(tmp_path))
    assert cfg.images_dir == "/var/lib/systemimager/images"
    assert cfg.stub_dir == "/etc/systemimager/rsync_stubs"


def test_conf_file_keys_are_case_insensitive(tmp_path):
    (tmp_path / "systemimager.conf").write_text("# c\ndefault_image_dir = /srv/images # x\nRSYNC_STUB_DIR=/s\n")
    cfg = store_config(str(tmp_path))
    assert (cfg.images_dir, cfg.stub_dir) == ("/srv/images", "/s")


def test_json_wins_over_conf(tmp_path):
    (tmp_path / "systemimager.conf").write_text("DEFAULT_IMAGE_DIR = /conf\n")
    (tmp_path / "systemimager.json").write_text(json.dumps({"imager": {"images_dir": "/json"}}))
    assert store_config(str(tmp_path)).images_dir == "/json"


def test_sis_confdir_env(tmp_path, monkeypatch):
    (tmp_path / "systemimager.conf").write_text("DEFAULT_IMAGE_DIR = /env\n")
    monkeypatch.setenv("SIS_CONFDIR", str(tmp_path))
    assert store_config().images_dir == "/env"


def test_stub_first_then_images_dir(tmp_path):
    images = tmp_path / "images"
    mkimage(images / "web")
    elsewhere = mkimage(tmp_path / "other" / "web")
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "40web").write_text(f"[web]\n\tpath={elsewhere}\n\n")
    (tmp_path / "systemimager.conf").write_text(f"DEFAULT_IMAGE_DIR={images}\nRSYNC_STUB_DIR={stubs}\n")
    cfg = store_config(str(tmp_path))
    assert resolve("web", cfg) == ("web", str(elsewhere))
    (stubs / "40web").unlink()
    assert resolve("web", cfg) == ("web", str(images / "web"))


def test_missing_image_names_the_dir_and_si_lsimage(tmp_path):
    (tmp_path / "systemimager.conf").write_text(f"DEFAULT_IMAGE_DIR={tmp_path}\n")
    with pytest.raises(Fatal, match=f"image 'nope' not found in {tmp_path}.*si_lsimage"):
        resolve("nope", store_config(str(tmp_path)))


@pytest.mark.parametrize("name", ["README", "-x", "a b", "..", ".a.si-xen-new-123"])
def test_bad_names(tmp_path, name):
    with pytest.raises(Fatal):
        resolve(name, store_config(str(tmp_path)))


def test_not_a_root_tree(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "systemimager.conf").write_text(f"DEFAULT_IMAGE_DIR={tmp_path}\n")
    with pytest.raises(Fatal, match="not a root tree"):
        resolve("img", store_config(str(tmp_path)))


def test_list_skips_warning_files(tmp_path):
    images = tmp_path / "images"
    mkimage(images / "a")
    mkimage(images / "b")
    for w in ("README", "ACHTUNG", "ATTENTION", "CUIDADO"):
        (images / w).write_text("DO NOT TOUCH")
    (images / "notimage").mkdir()
    mkimage(images / ".b.si-xen-new-4242")  # a capture's staging tree: work in progress, not an image
    (tmp_path / "systemimager.conf").write_text(f"DEFAULT_IMAGE_DIR={images}\nRSYNC_STUB_DIR={tmp_path}/none\n")
    assert [n for n, _ in list_images(store_config(str(tmp_path)))] == ["a", "b"]
