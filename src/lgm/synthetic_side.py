"""The synthetic side of a step: the meta loss of the synthetic views, its gradient in the image parameters.

``synthetic_backward`` runs in one process (whole or ``chunk`` views at a
time); ``sharded_synthetic_backward`` is the same for this process's share of
the views under torchrun (``lgm.distributed``). Joint runs call the first
once per backbone (``lgm.joint``).
"""

from __future__ import annotations

import torch

from lgm.augment import AugmentConfig, ViewAugmenter
from lgm.backbones import Backbone
from lgm.config import DistillConfig
from lgm.distributed import Shard
from lgm.matching import head_gradient, head_gradient_sums, meta_loss
from lgm.synthetic import SyntheticImages


def view_aug_config(cfg: DistillConfig) -> AugmentConfig:
    """How the synthetic views are augmented (--aug, --clamp-crop, --noise-*); see ``real_aug_config``."""
    return AugmentConfig(kind=cfg.aug, clamp_crop=cfg.clamp_crop, noise_std=cfg.noise_std, noise_mean=cfg.noise_mean)


def synthetic_backward(syn: SyntheticImages, view_labels: torch.Tensor, backbone: Backbone, g_real: torch.Tensor,
                       w: torch.Tensor, b: torch.Tensor, views: ViewAugmenter, step_seed: int, chunk: int,
                       autocast, scale: float = 1.0) -> torch.Tensor:
    """Meta loss of the synthetic views; its gradient is accumulated into the synthetic parameters.

    With ``chunk`` smaller than the number of views the gradient is still exact:
    a first pass takes every view's features without a graph; the meta loss
    depends on the views only through those features, so its gradient w.r.t.
    them (cheap, closed-form head) is formed once; then each chunk is re-run
    with a graph and backpropagated with its slice of that gradient. At most
    ``chunk`` views hold activations at any time. The gradient accumulated is
    that of ``scale`` times the loss (joint runs: the backbone's share); the
    loss returned is unscaled.
    """
    m = view_labels.shape[0]
    if chunk <= 0 or chunk >= m:
        with autocast:
            z = backbone.features(views.views(syn.render(), 0, m, step_seed))
        loss = meta_loss(g_real, head_gradient(z.to(w.dtype), view_labels, w, b))
        (loss * scale if scale != 1.0 else loss).backward()
        return loss.detach()
    bounds = [(s, min(s + chunk, m)) for s in range(0, m, chunk)]
    with torch.no_grad():
        images = syn.render()
        with autocast:
            z = torch.cat([backbone.features(views.views(images, s, e, step_seed)).to(w.dtype) for s, e in bounds])
    z.requires_grad_(True)
    loss = meta_loss(g_real, head_gradient(z, view_labels, w, b))
    (dz,) = torch.autograd.grad(loss * scale if scale != 1.0 else loss, z)
    for s, e in bounds:
        with autocast:
            z_chunk = backbone.features(views.views(syn.render(), s, e, step_seed))
        z_chunk.to(w.dtype).backward(dz[s:e])
    return loss.detach()


def sharded_synthetic_backward(syn: SyntheticImages, view_labels: torch.Tensor, backbone: Backbone,
                               g_real: torch.Tensor, w: torch.Tensor, b: torch.Tensor, views: ViewAugmenter,
                               step_seed: int, chunk: int, autocast, shard: Shard) -> torch.Tensor:
    """``synthetic_backward`` for this process's contiguous shard of the views (gradients not yet all-reduced).

    The meta loss depends on the views only through the sum S of their closed-form head gradients: S is the
    all-reduced sum of the shards' S_k, so dL/dS (the same on every process) is formed once and each
    process backpropagates dL/dS through its own S_k, whole or ``chunk`` views at a time.
    """
    m = view_labels.shape[0]
    lo, hi = shard.bounds(m)
    labels = view_labels[lo:hi]
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
            z = backbone.features(views.views(syn.render(), lo, hi, step_seed)).to(w.dtype)
    gw, gb = head_gradient_sums(z, labels, w, b)
    local = torch.cat([gw.reshape(-1), gb])
    total = shard.all_reduce_(local.detach().clone()).requires_grad_(True)
    loss = meta_loss(g_real, total / m)
    (d_total,) = torch.autograd.grad(loss, total)
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

