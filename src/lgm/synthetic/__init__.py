"""Synthetic-image parameterizations: a small registry keyed by name."""

from __future__ import annotations

from typing import Literal

import torch

from lgm.synthetic.base import SyntheticImages
from lgm.synthetic.pixels import Pixels
from lgm.synthetic.pyramid import Pyramid, default_grow_every, num_levels_for

ParamName = Literal["pyramid", "pixels"]

__all__ = ["SyntheticImages", "Pixels", "Pyramid", "make_synthetic", "default_grow_every", "num_levels_for"]


def make_synthetic(
    kind: str,
    num_images: int,
    resolution: int,
    decorrelate: bool,
    generator: torch.Generator,
    grow_every: int,
) -> SyntheticImages:
    if kind == "pyramid":
        return Pyramid(num_images, resolution, decorrelate, generator, grow_every=grow_every)
    if kind == "pixels":
        return Pixels(num_images, resolution, decorrelate, generator)
    raise ValueError(f"unknown parameterization {kind!r}; choose pyramid or pixels")
