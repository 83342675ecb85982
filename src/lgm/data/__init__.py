"""Dataset registry: names -> labelled image datasets read from local files."""

from __future__ import annotations

import os
from typing import Callable

from lgm.data.base import ImageDataset, ImageSplit, stratified_indices
from lgm.data.idx import load_fashion_mnist
from lgm.registry import Registry

__all__ = ["ImageDataset", "ImageSplit", "DATASETS", "register_dataset", "load_dataset", "resolve_data_root", "stratified_indices"]

DATA_ROOT_ENV = "LGM_DATA_ROOT"

DATASETS: Registry[Callable[[str | None], ImageDataset]] = Registry("dataset")


def register_dataset(name: str, loader: Callable[[str | None], ImageDataset]) -> None:
    DATASETS.register(name, loader)


register_dataset("fashion-mnist", load_fashion_mnist)


def resolve_data_root(data_root: str | None) -> str | None:
    return data_root or os.environ.get(DATA_ROOT_ENV) or None


def load_dataset(name: str, data_root: str | None = None) -> ImageDataset:
    """Load dataset ``name`` from ``data_root`` (or $LGM_DATA_ROOT, or its default location)."""
    loader = DATASETS.get(name)
    ds = loader(resolve_data_root(data_root))
    ds.check()
    return ds
