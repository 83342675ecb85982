"""The real side of a distillation step: live features, or features from a cache.

A real side answers one question per step: the head gradient of the real data
for the sampled head. ``LiveReal`` samples images, augments them once and runs
the backbone (the paper's procedure); ``CachedReal`` indexes features of
augmented views computed once per run, which removes the backbone pass and
makes large real batches affordable (with 1 image per class and few classes,
the paper's real batch of ipc*A*C images gives a very noisy gradient).
"""

from __future__ import annotations

import sys

import torch

from lgm.augment import AugmentConfig, augment
from lgm.backbones import Backbone
from lgm.data import Split
from lgm.matching import head_gradient


class LiveReal:
    """Uniformly sampled real images, augmented once, features without autograd."""

    def __init__(self, split: Split, resolution: int, crop: int, aug: AugmentConfig, backbone: Backbone,
                 device: torch.device, autocast) -> None:
        # File-backed splits are decoded once at the run's resolution (thread pool); in-memory ones as they are.
        self.split = split.materialize(resolution, progress=sys.stderr.isatty()).to(device)
        self.resolution, self.crop, self.aug = resolution, crop, aug
        self.backbone, self.device, self.autocast = backbone, device, autocast

    def __len__(self) -> int:
        return len(self.split)

    def gradient(self, w: torch.Tensor, b: torch.Tensor, n: int, sample_gen: torch.Generator,
                 aug_gen: torch.Generator) -> torch.Tensor:
        idx = torch.randperm(len(self.split), generator=sample_gen)[:n].to(self.device)
        x = self.split.load(idx, self.resolution, self.device)
        with torch.no_grad(), self.autocast:
            z = self.backbone.features(augment(x, self.crop, self.aug, aug_gen))
        return head_gradient(z.float(), self.split.labels[idx], w, b)


class CachedReal:
    """Rows of a feature cache (views x images, fp16 on the device)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        self.features = features.to(device)
        self.labels = labels.to(device)
        self.device = device

    def __len__(self) -> int:
        return self.features.shape[0]

    def gradient(self, w: torch.Tensor, b: torch.Tensor, n: int, sample_gen: torch.Generator,
                 aug_gen: torch.Generator) -> torch.Tensor:
        if n >= len(self):
            return head_gradient(self.features.float(), self.labels, w, b)
        idx = torch.randperm(len(self), generator=sample_gen)[:n].to(self.device)
        return head_gradient(self.features[idx].float(), self.labels[idx], w, b)


@torch.no_grad()
def compute_feature_cache(backbone: Backbone, split: Split, resolution: int, crop: int, aug: AugmentConfig,
                          views: int, generator: torch.Generator, device: torch.device, autocast,
                          batch: int = 500, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 features of ``views`` augmented views of every image of ``split`` (view-major) and their labels."""
    from tqdm.auto import tqdm

    n = len(split)
    out = torch.empty(views * n, backbone.feature_dim, dtype=torch.float16)
    chunks = [(v, s) for v in range(views) for s in range(0, n, batch)]
    for v, start in tqdm(chunks, desc="real features", disable=not progress, file=sys.stderr, dynamic_ncols=True):
        idx = torch.arange(start, min(start + batch, n))
        x = split.load(idx, resolution, device)
        with autocast:
            z = backbone.features(augment(x, crop, aug, generator))
        out[v * n + start: v * n + start + len(idx)] = z.float().cpu().half()
    return out, split.labels.repeat(views)
