"""The synthetic side of a step: the meta loss of the synthetic views, its gradient in the image parameters.

``matched_backward`` is the one synthetic backward of every run: K backbones
(one, for a single-backbone run), each with its real head gradient, its head
and its share of the loss; optionally ``chunk`` views at a time and
optionally this process's share of the views under torchrun
(``lgm.distributed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from lgm.augment import AugmentConfig, ViewAugmenter
from lgm.backbones import Backbone
from lgm.config import DistillConfig
from lgm.distributed import SINGLE, Shard
from lgm.matching import head_gradient_sums, meta_loss
from lgm.synthetic import SyntheticImages


def view_aug_config(cfg: DistillConfig) -> AugmentConfig:
    """How the synthetic views are augmented (--aug, --clamp-crop, --noise-*); see ``real_aug_config``."""
    return AugmentConfig(kind=cfg.aug, clamp_crop=cfg.clamp_crop, noise_std=cfg.noise_std, noise_mean=cfg.noise_mean)


@dataclass(frozen=True)
class Matched:
    """One backbone's term of a step: L_k = 1 - cos(g_real, g_syn(w, b)), entering the meta loss times ``scale``."""

    backbone: Backbone
    g_real: torch.Tensor
    w: torch.Tensor
    b: torch.Tensor
    scale: float = 1.0


def matched_backward(syn: SyntheticImages, view_labels: torch.Tensor, terms: Sequence[Matched],
                     views: ViewAugmenter, step_seed: int, chunk: int, autocast,
                     shard: Shard = SINGLE) -> list[torch.Tensor]:
    """Accumulates the gradient of sum_k scale_k L_k in the synthetic parameters; returns every L_k (unscaled).

    Every backbone sees the same views (one ``step_seed``) and is backpropagated
    on its own, so one backbone's activations are alive at a time. The meta loss
    depends on the views only through the sum S of their closed-form head
    gradients, so dL/dS is formed once (cheap) and backpropagated through S,
    which makes two things exact:

    - ``chunk``: a first pass takes every view's features without a graph; then
      each chunk is re-run with a graph and backpropagated with its slice of
      dL/dz. At most ``chunk`` views hold activations at any time.
    - ``shard``: each process holds a contiguous share of the views; S is the
      all-reduced sum of the shares' sums, and the parameter gradients are
      all-reduced at the end (one collective), so every process holds the
      single-process gradient.
    """
    m = view_labels.shape[0]
    lo, hi = shard.bounds(m)
    losses = [_backward_one(syn, view_labels[lo:hi], m, lo, hi, t, views, step_seed, chunk, autocast, shard)
              for t in terms]
    shard.all_reduce_grads(list(syn.parameters()))
    return losses


def _backward_one(syn: SyntheticImages, labels: torch.Tensor, m: int, lo: int, hi: int, term: Matched,
                  views: ViewAugmenter, step_seed: int, chunk: int, autocast, shard: Shard) -> torch.Tensor:
    backbone, w, b = term.backbone, term.w, term.b
    chunked = 0 < chunk < hi - lo
    if chunked:
        with torch.no_grad():
            images = syn.render()
            with autocast:
                z = torch.cat([backbone.features(views.views(images, s, min(s + chunk, hi), step_seed)).to(w.dtype)
                               for s in range(lo, hi, chunk)])
        z.requires_grad_(True)
    else:
        with autocast:
            z = backbone.features(views.views(syn.render(), lo, hi, step_seed))
        z = z.to(w.dtype)
    gw, gb = head_gradient_sums(z, labels, w, b)
    local = torch.cat([gw.reshape(-1), gb])
    total = shard.all_reduce_(local.detach().clone()).requires_grad_(True)
    loss = meta_loss(term.g_real, total / m)
    (d_total,) = torch.autograd.grad(loss * term.scale if term.scale != 1.0 else loss, total)
    if not chunked:
        local.backward(d_total)
        return loss.detach()
    (dz,) = torch.autograd.grad(local, z, d_total)
    for s in range(lo, hi, chunk):
        e = min(s + chunk, hi)
        with autocast:
            z_chunk = backbone.features(views.views(syn.render(), s, e, step_seed))
        z_chunk.to(w.dtype).backward(dz[s - lo:e - lo])
    return loss.detach()


def synthetic_backward(syn: SyntheticImages, view_labels: torch.Tensor, backbone: Backbone, g_real: torch.Tensor,
                       w: torch.Tensor, b: torch.Tensor, views: ViewAugmenter, step_seed: int, chunk: int,
                       autocast, scale: float = 1.0) -> torch.Tensor:
    """``matched_backward`` of one backbone in one process: its loss (the gradient of ``scale`` times it accumulates)."""
    return matched_backward(syn, view_labels, [Matched(backbone, g_real, w, b, scale)], views, step_seed, chunk,
                            autocast)[0]


def sharded_synthetic_backward(syn: SyntheticImages, view_labels: torch.Tensor, backbone: Backbone,
                               g_real: torch.Tensor, w: torch.Tensor, b: torch.Tensor, views: ViewAugmenter,
                               step_seed: int, chunk: int, autocast, shard: Shard) -> torch.Tensor:
    """``matched_backward`` of one backbone for this process's share of the views (gradients all-reduced)."""
    return matched_backward(syn, view_labels, [Matched(backbone, g_real, w, b)], views, step_seed, chunk, autocast,
                            shard)[0]
