"""Shared fixtures: a tiny Fashion-MNIST written in its real IDX layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lgm.data.idx import write_idx


def write_fashion_fixture(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """IDX files under root/fashion-mnist: class c is a bright horizontal band at rows 2c..2c+8."""
    d = root / "fashion-mnist"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i in range(n):
            x[i, 2 * y[i]: 2 * y[i] + 8, :] = 220
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's ~/.cache/lgm (a real-feature cache there would change auto mode)."""
    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path_factory.mktemp("lgm-cache")))


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    return write_fashion_fixture(tmp_path_factory.mktemp("data"))


# Settings for fast runs on the toy backbone.
TINY = dict(res=16, crop=14, augs=2, checkpoint_every=5, progress=False)
