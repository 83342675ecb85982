"""A tiny random CNN for tests and smoke runs (no weights to install)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lgm.backbones.base import BackboneInfo

TOY_INFO = BackboneInfo(
    name="toy_cnn",
    feature_dim=32,
    mean=(0.5, 0.5, 0.5),
    std=(0.25, 0.25, 0.25),
    input_size=None,
    weights="fixed random init (seed 0); for tests and smoke runs only",
    feature="global average pool",
    source="lgm (3 conv layers)",
    normalization="mean 0.5, std 0.25",
)


class ToyCNN(nn.Sequential):
    grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            return checkpoint(super().forward, x, use_reentrant=False)
        return super().forward(x)


def build_toy(random_init: bool, weights: str | None, input_size: int | None = None) -> nn.Module:
    net = ToyCNN(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.GELU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1))
    return net
