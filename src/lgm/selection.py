"""Which real training images: seeded random, nearest the class centroid, nearest a query.

The baselines (``lgm.baselines``), the demo and distillation's ``--init real``
all pick training images; these pure tensor functions live below all of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lgm.data.base import stratified_indices
from lgm.errors import LgmError


def random_indices(labels: torch.Tensor, ipc: int, seed: int, pool: torch.Tensor | None = None) -> torch.Tensor:
    """``ipc`` random images per class (from ``pool`` when given), class-major like a distilled set."""
    pool = torch.arange(labels.shape[0]) if pool is None else pool
    idx = pool[stratified_indices(labels[pool], ipc, torch.Generator().manual_seed(seed))]
    return idx[torch.argsort(labels[idx], stable=True)]


def centroid_indices(features: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int = 1) -> torch.Tensor:
    """Per class, the ``ipc`` images whose embeddings are nearest (L2) the class-mean embedding."""
    picks = []
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        if rows.numel() < ipc:
            raise LgmError(f"class {c} has {rows.numel()} training images, fewer than ipc = {ipc}")
        mean = features[rows].mean(0, keepdim=True)
        dist = torch.cdist(features[rows].float(), mean.float()).flatten()
        picks.append(rows[torch.argsort(dist, stable=True)[:ipc]])
    return torch.cat(picks)


def neighbor_indices(query: torch.Tensor, query_labels: torch.Tensor, features: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """For each query embedding, the most cosine-similar real image of the same class."""
    sim = F.normalize(query.float(), dim=1) @ F.normalize(features.float(), dim=1).t()
    sim = sim.masked_fill(query_labels[:, None] != labels[None, :], float("-inf"))
    return sim.argmax(1)
