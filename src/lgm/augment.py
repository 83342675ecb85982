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


@dataclass(frozen=True)
class NoiseDraw:
    """Per-sample noise: which samples get it (0/1 scale per sample) and the noise itself."""

    scale: torch.Tensor  # n
    noise: torch.Tensor  # n x C x H x W (std and mean applied)

    def __getitem__(self, s: slice) -> "NoiseDraw":
        return NoiseDraw(self.scale[s], self.noise[s])


def draw_noise(shape: tuple[int, ...], cfg: AugmentConfig, generator: torch.Generator,
               dtype: torch.dtype = torch.float32, noise_rows: int | None = None) -> NoiseDraw | None:
    """Which samples get noise (all ``shape[0]``) and the noise itself, for the first ``noise_rows`` samples only
    when given: the noise is the last draw, so leaving out the tail changes nothing before it."""
    if cfg.noise_std == 0 and cfg.noise_mean == 0:
        return None
    dev = generator.device
    scale = (torch.rand(shape[0], generator=generator, device=dev) < cfg.noise_p).to(dtype)
    rows = shape[0] if noise_rows is None else noise_rows
    noise = torch.randn((rows, *shape[1:]), generator=generator, device=dev, dtype=dtype) * cfg.noise_std \
        + cfg.noise_mean
    return NoiseDraw(scale, noise)


def apply_noise(x: torch.Tensor, draw: NoiseDraw | None) -> torch.Tensor:
    if draw is None:
        return x
    return x + (draw.noise * draw.scale.view(-1, 1, 1, 1)).to(device=x.device, dtype=x.dtype)


def add_noise(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise (std, mean per cfg) added to a random ``noise_p`` fraction of samples."""
    return apply_noise(x, draw_noise(tuple(x.shape), cfg, generator, x.dtype))


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


def normal_prefix_is_exact(generator: torch.Generator, count: int) -> bool:
    """Whether ``count`` float32 normals drawn from ``generator`` equal the first ``count`` of a longer draw.

    True for torch's CPU generator when ``count`` is a multiple of 16 (its vectorized normal transforms
    whole blocks of 16 uniforms and redraws an unaligned tail); checked once on this torch, never assumed.
    CUDA's mapping of draws to elements depends on the launch size: never.
    """
    return generator.device.type == "cpu" and count % 16 == 0 and _cpu_normal_prefix_holds()


_PREFIX_HOLDS: list[bool] = []


def _cpu_normal_prefix_holds() -> bool:
    if not _PREFIX_HOLDS:
        g = torch.Generator()
        full = torch.randn(4, 48, generator=g.manual_seed(12345))
        part = torch.randn(1, 48, generator=g.manual_seed(12345))
        small = torch.randn(16, generator=g.manual_seed(12345))
        _PREFIX_HOLDS.append(torch.equal(full[:1], part) and torch.equal(full.flatten()[:16], small))
    return _PREFIX_HOLDS[0]


# Views per block of the synthetic side's random draws (see ViewAugmenter).
VIEW_BLOCK = 64
_MASK63 = (1 << 63) - 1


def block_seed(step_seed: int, block: int) -> int:
    """A seed per (step, block of views): splitmix64-style mixing, so neighbouring blocks are unrelated."""
    z = (step_seed + (block + 1) * 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK63


class ViewAugmenter:
    """Augmented views of the synthetic set for one step, any slice of them on demand.

    View v shows image v mod N (the N images tiled A times). Its random draws
    come from a generator seeded by (step seed, v // VIEW_BLOCK), never from a
    running stream, so a slice of views (a memory chunk, one process's shard)
    gets exactly the draws it gets inside the whole batch: chunked and
    distributed steps equal the plain one.
    """

    def __init__(self, cfg: AugmentConfig, size: int, device: torch.device) -> None:
        self.cfg, self.size = cfg, size
        self.generator = torch.Generator(device=device)

    def views(self, images: torch.Tensor, start: int, stop: int, step_seed: int) -> torch.Tensor:
        n = images.shape[0]
        # The tiles by repeat, not images[arange % n]: that indexing's backward accumulates by index, and on a
        # multi-threaded CPU its order (so the gradient's last bits) changed from one process to the next, so
        # two identical runs drifted apart. repeat's backward sums the tiles in order: the one-thread bits, always.
        first, last = start // n, -(-stop // n)
        tiled = images if last - first == 1 else images.repeat(last - first, *([1] * (images.dim() - 1)))
        return self.augment_range(tiled[start - first * n:stop - first * n], start, step_seed)

    def augment_range(self, x: torch.Tensor, start: int, step_seed: int) -> torch.Tensor:
        """Augment ``x`` as views ``start .. start + len(x)`` of a step (each row its own draws)."""
        stop = start + x.shape[0]
        c = x.shape[1]
        if self.cfg.kind == "none":
            return resize(x, self.size)
        if stop == start:
            return x.new_zeros((0, c, self.size, self.size))
        first, last = start // VIEW_BLOCK, (stop - 1) // VIEW_BLOCK
        shape = (VIEW_BLOCK, c, self.size, self.size)
        crops, noises = [], []
        for block in range(first, last + 1):
            self.generator.manual_seed(block_seed(step_seed, block))
            crops.append(sample_crop_params(VIEW_BLOCK, self.cfg, self.generator))
            # The last block's noise only as far as the views asked for, where that draws the same numbers.
            rows = stop - block * VIEW_BLOCK if block == last else VIEW_BLOCK
            if not (rows < VIEW_BLOCK and normal_prefix_is_exact(self.generator, rows * c * self.size ** 2)):
                rows = VIEW_BLOCK
            noises.append(draw_noise(shape, self.cfg, self.generator, noise_rows=rows))
        cut = slice(start - first * VIEW_BLOCK, stop - first * VIEW_BLOCK)
        params = CropParams(**{f: torch.cat([getattr(p, f) for p in crops])[cut] for f in ("x0", "y0", "w", "h",
                                                                                            "flip")})
        out = crop_resize(x, params, self.size)
        if noises[0] is None:
            return out
        return apply_noise(out, NoiseDraw(torch.cat([d.scale for d in noises]), torch.cat([d.noise for d in noises]))[cut])
