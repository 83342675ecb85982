"""Shared fixtures: a tiny Fashion-MNIST written in its real IDX layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lgm.data.idx import write_band_fashion_mnist


def write_fashion_fixture(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """IDX files under root/fashion-mnist: class c is a bright horizontal band at rows 2c..2c+8."""
    return write_band_fashion_mnist(root, n_train, n_test, seed)


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory):
    """No test reads or writes the user's ~/.cache/lgm (a real-feature cache there would change auto mode).

    Set outside the test's ``monkeypatch``: a test that calls ``monkeypatch.undo()`` to drop its own patches
    must keep the private directory.
    """
    before = os.environ.get("LGM_CACHE_DIR")
    os.environ["LGM_CACHE_DIR"] = str(tmp_path_factory.mktemp("lgm-cache"))
    yield
    if before is None:
        os.environ.pop("LGM_CACHE_DIR", None)
    else:
        os.environ["LGM_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_fixture(tmp_path_factory.mktemp("data"))


# Settings for fast runs on the toy backbone.
TINY = dict(res=16, crop=14, augs=2, checkpoint_every=5, progress=False)
