"""Plain pixel parameterization (the paper's -pyramid ablation)."""

from __future__ import annotations

import torch
from torch import nn

from lgm.synthetic.base import SyntheticImages


class Pixels(SyntheticImages):
    """One N x 3 x R x R tensor, N(0, 1) at init."""

    def __init__(self, num_images: int, resolution: int, decorrelate: bool, generator: torch.Generator) -> None:
        super().__init__(num_images, resolution, decorrelate)
        shape = (num_images, 3, resolution, resolution)
        self.pixels = nn.Parameter(torch.randn(shape, generator=generator, device=generator.device))

    def raw(self) -> torch.Tensor:
        return self.pixels

    def init_from_images(self, images: torch.Tensor) -> None:
        with torch.no_grad():
            self.pixels.copy_(self.target_raw(images))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"pixels": self.pixels.detach()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        value = tensors["pixels"]
        if value.shape != self.pixels.shape:
            raise ValueError(f"checkpoint pixels have shape {tuple(value.shape)}, expected {tuple(self.pixels.shape)}")
        with torch.no_grad():
            self.pixels.copy_(value)
