"""Linear gradient matching: closed-form head gradients and the cosine meta loss.

For a linear head (W, b) on features z with labels y, the mean cross-entropy
gradient is known in closed form, so neither side needs autograd through the
head: with P = softmax(z W^T + b) - onehot(y),

    dL/dW = P^T z / B,      dL/db = mean over rows of P.

The synthetic side keeps its graph (P and z both depend on the synthetic
images), so differentiating the meta loss through these formulas is exactly the
double-backward of the autograd formulation, at the cost of one ordinary
backward through the backbone.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

HeadInit = Literal["normal001", "normal1", "torch"]


def sample_head(
    num_classes: int,
    feature_dim: int,
    generator: torch.Generator,
    init: HeadInit = "normal001",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fresh random linear head (W: C x f, b: C) drawn from ``generator``.

    ``normal001``: W ~ N(0, 0.01^2), b = 0 (the authors' code, our default).
    ``normal1``:   W ~ N(0, 1), b = 0 (the paper's text).
    ``torch``:     nn.Linear's default, W, b ~ U(-1/sqrt(f), 1/sqrt(f)).
    """
    device = generator.device
    shape = (num_classes, feature_dim)
    if init == "normal001":
        w = torch.randn(shape, generator=generator, device=device, dtype=dtype) * 0.01
        b = torch.zeros(num_classes, device=device, dtype=dtype)
    elif init == "normal1":
        w = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        b = torch.zeros(num_classes, device=device, dtype=dtype)
    elif init == "torch":
        bound = 1.0 / math.sqrt(feature_dim)
        w = (torch.rand(shape, generator=generator, device=device, dtype=dtype) * 2 - 1) * bound
        b = (torch.rand(num_classes, generator=generator, device=device, dtype=dtype) * 2 - 1) * bound
    else:
        raise ValueError(f"unknown head init {init!r}; choose one of normal001, normal1, torch")
    return w, b


def head_gradient_sums(
    z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums (not means) over the batch of the cross-entropy gradients w.r.t. W and b.

    Sums compose across chunks and processes; divide by the batch size for the
    mean-loss gradient.
    """
    z = z.to(w.dtype)
    p = torch.softmax(z @ w.t() + b, dim=1)
    p = p - F.one_hot(y, num_classes=w.shape[0]).to(p.dtype)
    return p.t() @ z, p.sum(dim=0)


def head_gradient(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Gradient of mean cross-entropy w.r.t. (W, b), flattened into one vector."""
    gw, gb = head_gradient_sums(z, y, w, b)
    n = z.shape[0]
    return torch.cat([gw.reshape(-1), gb]) / n


def meta_loss(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity of the two flattened head gradients (bias included)."""
    return 1.0 - F.cosine_similarity(g_real.reshape(1, -1), g_syn.reshape(1, -1), dim=1, eps=1e-12)[0]
