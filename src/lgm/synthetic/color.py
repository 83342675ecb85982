"""Color decorrelation (feature-visualization style).

Images are optimized in a decorrelated color space; a fixed 3x3 matrix maps
each pixel back to correlated RGB before the sigmoid. The matrix is the square
root of ImageNet's color covariance (from its SVD), scaled so that its largest
column has unit norm.
"""

from __future__ import annotations

import torch

COLOR_CORRELATION_SVD_SQRT = (
    (0.26, 0.09, 0.02),
    (0.27, 0.00, -0.05),
    (0.27, -0.09, 0.03),
)


def decorrelation_matrix(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """M = K / max_column_norm(K); a pixel v becomes M v."""
    k = torch.tensor(COLOR_CORRELATION_SVD_SQRT, dtype=torch.float64)
    m = k / k.norm(dim=0).max()
    return m.to(dtype=dtype, device=device)


def to_correlated(s: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply ``matrix`` to the channel vector of every pixel of ``s`` (N x 3 x H x W)."""
    return torch.einsum("cj,njhw->nchw", matrix.to(s.dtype), s)


def squash(s: torch.Tensor) -> torch.Tensor:
    """sigmoid(2 s) = 1/2 + tanh(s)/2: the smooth clamp into (0, 1)."""
    return torch.sigmoid(2.0 * s)


def unsquash(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Inverse of :func:`squash` for images in [0, 1] (clamped away from 0 and 1)."""
    x = x.clamp(eps, 1 - eps)
    return 0.5 * torch.log(x / (1 - x))
