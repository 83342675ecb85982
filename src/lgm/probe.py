"""A simple, honest linear-probe evaluation (the full SPEC §6 protocol builds on this).

Training images are seen through ``views`` augmented copies each (the same
flip + random-resized-crop + noise as distillation); test images are resized
to the run's resolution and center-cropped. The probe trains for a fixed
number of epochs: nothing is selected on any split, and the test split is only
ever scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lgm.augment import AugmentConfig, augment
from lgm.backbones import Backbone
from lgm.data import ImageSplit


@dataclass(frozen=True)
class ProbeConfig:
    views: int = 100
    """Augmented views per training image (small sets); large sets use one center view."""
    epochs: int = 300
    lr: float = 1e-3
    batch: int = 256
    weight_decay: float = 0.0


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    top = (x.shape[-2] - crop) // 2
    left = (x.shape[-1] - crop) // 2
    return x[..., top:top + crop, left:left + crop]


@torch.no_grad()
def split_features(backbone: Backbone, split: ImageSplit, res: int, crop: int, device: torch.device,
                   batch: int = 500) -> torch.Tensor:
    """Features of every image of ``split``: resize to ``res``, center-crop ``crop``."""
    out = []
    for start in range(0, len(split), batch):
        idx = torch.arange(start, min(start + batch, len(split)))
        x = center_crop(split.load(idx, res, device), crop)
        out.append(backbone.features(x).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def view_features(backbone: Backbone, images: torch.Tensor, views: int, crop: int, aug: AugmentConfig,
                  generator: torch.Generator, device: torch.device, batch: int = 500) -> torch.Tensor:
    """Features of ``views`` augmented copies of each image (view-major: copy v of image i at v*N + i)."""
    x = images.to(device)
    out = []
    per_chunk = max(1, batch // x.shape[0])
    for v in range(0, views, per_chunk):
        k = min(per_chunk, views - v)
        out.append(backbone.features(augment(x.repeat(k, 1, 1, 1), crop, aug, generator)).float().cpu())
    return torch.cat(out)


def train_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear head trained with Adam + cosine decay on fixed features; returns (W, b)."""
    n, dim = features.shape
    w = torch.zeros(num_classes, dim, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    with torch.no_grad():
        w.normal_(0, 0.01, generator=generator)
    opt = torch.optim.Adam([w, b], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=generator)
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch:(i + 1) * cfg.batch]
            loss = F.cross_entropy(features[idx] @ w.t() + b, labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return w.detach(), b.detach()


def top1(w: torch.Tensor, b: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float(((features @ w.t() + b).argmax(1) == labels).float().mean())
