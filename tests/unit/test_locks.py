import os

import pytest

from si_xen.locks import exclusive


def test_second_holder_is_refused_and_the_file_goes_away(tmp_path):
    path = str(tmp_path / "locks" / "vm.lock")
    with exclusive(path, wait=False):
        assert os.path.exists(path)
        with pytest.raises(BlockingIOError):
            with exclusive(path, wait=False):
                pass
        assert os.path.exists(path)
    assert not os.path.exists(path)
    with exclusive(path, wait=False):  # reusable after release
        pass
