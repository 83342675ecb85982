"""What the benchmarks' ``--smoke`` modes share: tiny data in a temporary directory, the toy backbone.

A smoke run executes a benchmark's code paths at sizes that take seconds on a
CPU, so that the test suite (tests/test_benchmarks.py) notices when a script
no longer runs. Its numbers mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BACKBONE = "toy_cnn"


def fashion_fixture(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> str:
    """A Fashion-MNIST in its IDX layout under ``root``/fashion-mnist; returns the data root to pass on.

    Class c is a bright band at rows 2c..2c+8 over noise, so probes and
    distillation have something to learn.
    """
    from lgm.data.idx import write_idx

    d = Path(root) / "fashion-mnist"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i in range(n):
            x[i, 2 * y[i]: 2 * y[i] + 8, :] = 220
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y)
    return str(root)
