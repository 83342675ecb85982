"""Multi-scale pyramid parameterization with progressive growth.

Each image is a sum of levels of resolution 1, 2, 4, ..., R, each bilinearly
upsampled to R. Optimization starts with the 1x1 level and adds the next one
every ``grow_every`` steps. Levels are initialized N(0, 1) / L (L = number of
levels); on growth the existing levels are multiplied by L_old / L_new so that
every level keeps the common 1 / L scale.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lgm.synthetic.base import SyntheticImages

from lgm.pyramid_schedule import PAPER_GROW_EVERY, PAPER_STEPS, default_grow_every, num_levels_for  # noqa: F401


class Pyramid(SyntheticImages):
    def __init__(
        self,
        num_images: int,
        resolution: int,
        decorrelate: bool,
        generator: torch.Generator,
        grow_every: int = PAPER_GROW_EVERY,
    ) -> None:
        super().__init__(num_images, resolution, decorrelate)
        if grow_every < 1:
            raise ValueError(f"grow_every must be >= 1, got {grow_every}")
        self.max_levels = num_levels_for(resolution)
        self.grow_every = grow_every
        self.pyramid = nn.ParameterList([nn.Parameter(self._draw(1, 1, generator))])

    def _draw(self, side: int, num_levels: int, generator: torch.Generator) -> torch.Tensor:
        shape = (self.num_images, 3, side, side)
        return torch.randn(shape, generator=generator, device=generator.device) / num_levels

    @property
    def levels(self) -> int:
        return len(self.pyramid)

    def init_from_images(self, images: torch.Tensor) -> None:
        """All levels at once (no growth left): each level holds the detail of its scale (a Laplacian-style
        decomposition under bilinear upsampling), so the sum renders exactly ``images``."""
        target = self.target_raw(images)
        size = (self.resolution, self.resolution)
        levels, approx = [], torch.zeros_like(target)
        for i in range(self.max_levels):
            side = 2**i
            coarse = F.adaptive_avg_pool2d(target - approx, side) if side < self.resolution else target - approx
            levels.append(coarse)
            approx = approx + (coarse if side == self.resolution else
                               F.interpolate(coarse, size=size, mode="bilinear", align_corners=False))
        self.pyramid = nn.ParameterList([nn.Parameter(level.contiguous()) for level in levels])

    def level_sides(self) -> list[int]:
        return [2**i for i in range(self.levels)]

    def levels_at(self, step: int) -> int:
        return min(self.max_levels, 1 + step // self.grow_every)

    def grow_to(self, step: int, generator: torch.Generator) -> bool:
        grew = False
        while self.levels < self.levels_at(step):
            old, new = self.levels, self.levels + 1
            with torch.no_grad():
                for p in self.pyramid:
                    p.mul_(old / new)
            self.pyramid.append(nn.Parameter(self._draw(2**old, new, generator)))
            grew = True
        return grew

    def raw(self) -> torch.Tensor:
        size = (self.resolution, self.resolution)
        total = None
        for p in self.pyramid:
            up = p if p.shape[-1] == self.resolution else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            total = up if total is None else total + up
        return total

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"level_{p.shape[-1]}": p.detach() for p in self.pyramid}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        sides = sorted(int(k.split("_")[1]) for k in tensors if k.startswith("level_"))
        if sides != [2**i for i in range(len(sides))] or not sides or sides[-1] > self.resolution:
            raise ValueError(f"checkpoint pyramid levels {sides} do not fit resolution {self.resolution}")
        for s in sides:
            expected = (self.num_images, 3, s, s)
            if tuple(tensors[f"level_{s}"].shape) != expected:
                raise ValueError(f"checkpoint level_{s} has shape {tuple(tensors[f'level_{s}'].shape)}, expected {expected}")
        device = self.pyramid[0].device
        self.pyramid = nn.ParameterList(
            [nn.Parameter(tensors[f"level_{s}"].to(device=device, dtype=torch.float32).clone()) for s in sides]
        )
