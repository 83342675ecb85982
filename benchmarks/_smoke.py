"""What the benchmarks' ``--smoke`` modes share: tiny data in a temporary directory, the toy backbone.

A smoke run executes a benchmark's code paths at sizes that take seconds on a
CPU, so that the test suite (tests/test_benchmarks.py) notices when a script
no longer runs. Its numbers mean nothing.
"""

from __future__ import annotations

from pathlib import Path


BACKBONE = "toy_cnn"


def fashion_fixture(root: Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> str:
    """A Fashion-MNIST in its IDX layout under ``root``/fashion-mnist; returns the data root to pass on.

    Class c is a bright band at rows 2c..2c+8 over noise, so probes and
    distillation have something to learn.
    """
    from lgm.data.idx import write_band_fashion_mnist

    return str(write_band_fashion_mnist(root, n_train, n_test, seed))
