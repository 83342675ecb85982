"""Differentiable augmentation with independent random parameters per sample.

torchvision.transforms.v2 draws one parameter set per call (the whole batch is
flipped/cropped alike) and kornia is slow at the batch sizes distillation uses,
so flip + random-resized-crop are one affine grid per sample, resampled with a
single ``grid_sample`` call. Every draw comes from the generator passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

AugName = Literal["standard", "none"]


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of the "standard" augmentation (SPEC §4)."""

    kind: AugName = "standard"
    flip_p: float = 0.5
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    clamp_crop: bool = True
    noise_std: float = 0.2
    noise_mean: float = 0.0
    noise_p: float = 0.5


@dataclass(frozen=True)
class CropParams:
    """Per-sample crop boxes as fractions of the side: left, top, width, height; flip flags."""

    x0: torch.Tensor
    y0: torch.Tensor
    w: torch.Tensor
    h: torch.Tensor
    flip: torch.Tensor


def sample_crop_params(n: int, cfg: AugmentConfig, generator: torch.Generator) -> CropParams:
    """Random-resized-crop boxes and flips for ``n`` samples."""
    dev = generator.device
    u = torch.rand(n, 5, generator=generator, device=dev, dtype=torch.float32)
    lo, hi = cfg.scale
    area = lo + (hi - lo) * u[:, 0]
    log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, 1])
    w = torch.sqrt(area * aspect)
    h = torch.sqrt(area / aspect)
    if cfg.clamp_crop:
        w = w.clamp(max=1.0)
        h = h.clamp(max=1.0)
    # Unclamped boxes (the authors' variant) may exceed the image: the top-left
    # corner is then drawn from a negative range and the border is zero-padded.
    x0 = (1.0 - w) * u[:, 2]
    y0 = (1.0 - h) * u[:, 3]
    flip = u[:, 4] < cfg.flip_p
    return CropParams(x0=x0, y0=y0, w=w, h=h, flip=flip)


def crop_resize(x: torch.Tensor, params: CropParams, size: int) -> torch.Tensor:
    """Resample box ``params`` of every image in ``x`` to ``size`` x ``size`` (bilinear)."""
    n = x.shape[0]
    sign = 1.0 - 2.0 * params.flip.float()
    theta = torch.zeros(n, 2, 3, device=params.w.device, dtype=torch.float32)
    # align_corners=False: normalized -1..1 spans pixel edges, so a box of
    # fraction w centred at c maps to scale w and offset 2c - 1.
    theta[:, 0, 0] = params.w * sign
    theta[:, 0, 2] = 2.0 * (params.x0 + params.w / 2) - 1.0
    theta[:, 1, 1] = params.h
    theta[:, 1, 2] = 2.0 * (params.y0 + params.h / 2) - 1.0
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False).to(x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def add_noise(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise (std, mean per cfg) added to a random ``noise_p`` fraction of samples."""
    if cfg.noise_std == 0 and cfg.noise_mean == 0:
        return x
    n = x.shape[0]
    dev = generator.device
    apply = (torch.rand(n, generator=generator, device=dev) < cfg.noise_p).to(x.dtype)
    noise = torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype)
    noise = noise * cfg.noise_std + cfg.noise_mean
    return x + noise * apply.view(n, 1, 1, 1).to(x.device)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Plain bilinear resize of the whole image (the "none" augmentation)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def augment(x: torch.Tensor, size: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch of images in [0, 1] to ``size`` x ``size``, each sample independently."""
    if cfg.kind == "none":
        return resize(x, size)
    if cfg.kind != "standard":
        raise ValueError(f"unknown augmentation {cfg.kind!r}; choose standard or none")
    params = sample_crop_params(x.shape[0], cfg, generator)
    out = crop_resize(x, params, size)
    return add_noise(out, cfg, generator)
