"""Output files get the mode the user's umask gives, not mkstemp's 0600."""

import os
import stat

import pytest

from asdt_lightning.io_utils import atomic_write_text, current_umask


@pytest.fixture
def umask():
    def set_mask(mask: int) -> int:
        return os.umask(mask)

    previous = os.umask(0o022)
    os.umask(previous)
    yield set_mask
    os.umask(previous)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    path = atomic_write_text(tmp_path / "metrics.json", "{}")
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert path.read_text() == "{}"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind
