"""The frozen feature extractor every part of lgm talks to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BackboneInfo:
    """What the registry knows about a backbone before building it."""

    name: str
    feature_dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int | None  # None: any resolution
    weights: str  # where the weights come from, for listings and errors
    feature: str  # how the feature is taken, e.g. "global average pool"


class Backbone(nn.Module):
    """A frozen network mapping images in [0, 1] to feature vectors.

    It owns its normalization, its input size and the greyscale-to-RGB
    conversion, so callers only ever hand it images in [0, 1].
    """

    def __init__(self, info: BackboneInfo, model: nn.Module, random_init: bool) -> None:
        super().__init__()
        self.info = info
        self.model = model
        self.random_init = random_init
        self.register_buffer("mean", torch.tensor(info.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(info.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def feature_dim(self) -> int:
        return self.info.feature_dim

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen means frozen: batch-norm statistics and dropout never switch on.
        return super().train(False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.info.input_size
        if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
