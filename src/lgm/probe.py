"""Linear probes on frozen features: the paper's protocol (SPEC §6), honest and batched.

A probe is a linear head trained with Adam (lr = 0.001 * batch / 256), cosine
decay to zero over ``epochs``, cross-entropy. Training images are augmented
every epoch: each image has a pool of ``views`` augmented copies whose features
are computed once, and every epoch draws one view per image from the pool (the
protocol's per-epoch augmentation, without a backbone pass per epoch). Early
stopping watches a validation split carved from the real *training* set; the
test split is only ever scored.

The ``authors`` protocol is the authors' evaluation loop: head W ~ N(0, 0.01^2),
b = 0; lr = 0.001 * min(batch, N) / 256 for N training images; cosine decay
stepped once per epoch; flip + unclamped random-resized crop, no noise; a fresh
view every epoch (the pool holds ``epochs`` views, epoch e trains on view e);
the last epoch is kept. Their fp16 autocast is not reproduced (fp32 here).

Repeats (one seed each) are trained together as one batched model: their
parameters are stacked (R x C x f) and each repeat draws its own views and
batch order from its own generator, so repeat r equals a separate run with
seed r (Adam is elementwise; the summed loss keeps the repeats' gradients
apart).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lgm.augment import AugmentConfig, augment
from lgm.backbones import Backbone
from lgm.data import ImageSplit

ProtocolName = Literal["spec", "authors"]


@dataclass(frozen=True)
class ProbeConfig:
    """Probe protocol. ``spec`` (default): SPEC §6 with validation early stopping.
    ``authors``: the authors' evaluation code (see the module docstring); build it with ``named``."""

    protocol: ProtocolName = "spec"
    epochs: int = 1000
    """Maximum epochs (cosine decay spans all of them)."""
    batch: int = 100
    lr: float = 0.0
    """0 = the protocol's rule: 0.001 * batch / 256 (spec), 0.001 * min(batch, N) / 256 (authors)."""
    patience: int = 50
    """Stop after this many epochs without a better validation top-1 (0 = never; keep the last epoch)."""
    views: int = 100
    """Pool of augmented views per training image."""
    weight_decay: float = 0.0
    view_order: Literal["random", "sequential"] = "random"
    """random: each epoch draws one view per image from the pool; sequential: epoch e takes view e mod views
    (with views = epochs, a fresh view every epoch, as the authors' loop augments every batch anew)."""
    head_init: Literal["zeros", "normal001"] = "zeros"
    """Initial head: zeros, or W ~ N(0, 0.01^2) from the repeat's generator and b = 0 (the authors')."""
    schedule: Literal["step", "epoch"] = "step"
    """Cosine decay per optimizer step, or per epoch (the authors' CosineAnnealingLR stepped once an epoch)."""
    clamp_crop: bool = True
    """Crop boxes clamped to the image; False: the authors' crop (boxes may exceed it, zero-padded)."""
    noise: bool = True
    """Gaussian noise on the training views (SPEC §4); the authors' evaluation has none."""

    @classmethod
    def named(cls, protocol: ProtocolName, **overrides) -> "ProbeConfig":
        """The protocol's settings, with ``overrides``; ``views=0`` means the protocol's own (authors: epochs)."""
        if protocol == "spec":
            cfg = cls(**overrides)
            return cfg if cfg.views else dataclasses.replace(cfg, views=cls.views)
        if protocol == "authors":
            cfg = cls(**({"protocol": "authors", "patience": 0, "views": 0, "view_order": "sequential",
                          "head_init": "normal001",
                          "schedule": "epoch", "clamp_crop": False, "noise": False} | overrides))
            return cfg if cfg.views else dataclasses.replace(cfg, views=cfg.epochs)
        raise ValueError(f"unknown probe protocol {protocol!r}; choose spec or authors")

    def learning_rate(self, n: int) -> float:
        """The learning rate for a training set of ``n`` images."""
        if self.lr:
            return self.lr
        # The authors' loader batch is min(100, N), and their linear scaling rule reads that batch size.
        batch = min(self.batch, n) if self.protocol == "authors" else self.batch
        return 1e-3 * batch / 256

    @property
    def lr_rule(self) -> str:
        if self.lr:
            return f"{self.lr:g} (fixed)"
        return f"0.001 * min({self.batch}, N) / 256" if self.protocol == "authors" else f"0.001 * {self.batch} / 256"

    @property
    def augmentation(self) -> AugmentConfig:
        return AugmentConfig(clamp_crop=self.clamp_crop, noise_std=AugmentConfig.noise_std if self.noise else 0.0)


@dataclass
class ProbeResult:
    """Trained heads of R repeats, the epoch each was taken at and its validation top-1 (NaN: none)."""

    weight: torch.Tensor  # R x C x f
    bias: torch.Tensor  # R x C
    epoch: torch.Tensor  # R
    val_top1: torch.Tensor  # R

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """R x M x C logits of M feature rows."""
        return torch.einsum("mf,rcf->rmc", features.to(self.weight.dtype), self.weight) + self.bias[:, None, :]


def center_crop(x: torch.Tensor, crop: int) -> torch.Tensor:
    top = (x.shape[-2] - crop) // 2
    left = (x.shape[-1] - crop) // 2
    return x[..., top:top + crop, left:left + crop]


@torch.no_grad()
def center_features(backbone: Backbone, images: torch.Tensor, crop: int, device: torch.device) -> torch.Tensor:
    """Float32 CPU features of the center ``crop`` of each image (how an image set is embedded for 1-NN/selection)."""
    return backbone.features(center_crop(images.to(device), crop)).float().cpu()


@torch.no_grad()
def split_rows_features(backbone: Backbone, split: ImageSplit, res: int, crop: int, device: torch.device,
                        start: int, stop: int) -> torch.Tensor:
    """Features of images ``start:stop`` of ``split``: resize to ``res``, center-crop ``crop`` (the test transform)."""
    x = center_crop(split.load(torch.arange(start, stop), res, device), crop)
    return backbone.features(x).float().cpu()


@torch.no_grad()
def view_features(backbone: Backbone, images: torch.Tensor, views: int, crop: int, aug: AugmentConfig,
                  generator: torch.Generator, device: torch.device, batch: int = 500) -> torch.Tensor:
    """Features of ``views`` augmented copies of each image, as a views x N x f pool."""
    x = images.to(device)
    out = []
    per_chunk = max(1, batch // x.shape[0])
    with backbone.bulk_inference(views * x.shape[0]):
        for v in range(0, views, per_chunk):
            k = min(per_chunk, views - v)
            out.append(backbone.features(augment(x.repeat(k, 1, 1, 1), crop, aug, generator)).float().cpu())
    return torch.cat(out).view(views, x.shape[0], -1)


def _cosine_factor(step: int, total: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def train_probes(pool: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: ProbeConfig, seeds: list[int],
                 val: tuple[torch.Tensor, torch.Tensor] | None = None,
                 device: torch.device | str | None = None) -> ProbeResult:
    """Train one probe per seed on a views x N x f feature pool (``pool`` may also be N x f: one view,
    or R x views x N x f: a pool of its own for every repeat).

    With ``val`` (features, labels) and ``cfg.patience`` > 0, each repeat keeps
    its best-validation epoch and stops after ``patience`` epochs without
    improvement; otherwise it keeps its last epoch.

    ``device`` (default: the pool's) is where the probes train; every random draw
    (head init, views, order) comes from CPU generators whatever the device, so a
    repeat draws the same on every device. The result is on the CPU.
    """
    device = torch.device(device) if device is not None else pool.device
    pool, labels = pool.to(device), labels.to(device)
    if val is not None:
        val = (val[0].to(device), val[1].to(device))
    if pool.dim() == 2:
        pool = pool.unsqueeze(0)
    pools = list(pool) if pool.dim() == 4 else [pool] * len(seeds)
    if len(pools) != len(seeds):
        raise ValueError(f"{len(pools)} per-repeat pools for {len(seeds)} seeds")
    views, n, dim = pools[0].shape
    if labels.shape != (n,):
        raise ValueError(f"pool holds {n} images but labels have shape {tuple(labels.shape)}")
    if not torch.isfinite(pool).all():
        raise ValueError("probe features contain NaN or infinite values")
    if cfg.view_order not in ("random", "sequential") or cfg.schedule not in ("step", "epoch"):
        raise ValueError(f"unknown probe view order {cfg.view_order!r} or schedule {cfg.schedule!r}")
    reps = len(seeds)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    if cfg.head_init == "normal001":
        # Drawn before anything else from each repeat's generator (a repeat still equals its own run).
        w = torch.stack([torch.randn(num_classes, dim, generator=g) * 0.01 for g in gens]).to(device)
    elif cfg.head_init == "zeros":
        w = torch.zeros(reps, num_classes, dim, device=device)
    else:
        raise ValueError(f"unknown probe head init {cfg.head_init!r}; choose zeros or normal001")
    w.requires_grad_(True)
    b = torch.zeros(reps, num_classes, device=device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=cfg.learning_rate(n), weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(n / cfg.batch)
    total = cfg.epochs * steps_per_epoch
    per_epoch = cfg.schedule == "epoch"

    def factor(step: int) -> float:
        return _cosine_factor(step // steps_per_epoch, cfg.epochs) if per_epoch else _cosine_factor(step, total)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    sequential = cfg.view_order == "sequential"
    select = val is not None and cfg.patience > 0
    best_w, best_b = w.detach().clone(), b.detach().clone()
    best_acc = torch.full((reps,), -1.0, device=device)
    best_epoch = torch.full((reps,), cfg.epochs - 1, dtype=torch.long, device=device)
    since = torch.zeros(reps, dtype=torch.long, device=device)
    rows = torch.arange(n, device=device)
    for epoch in range(cfg.epochs):
        picks, orders = [], []
        for g in gens:
            if sequential or views == 1:
                picks.append(torch.full((n,), epoch % views, dtype=torch.long))
            else:
                picks.append(torch.randint(views, (n,), generator=g))
            orders.append(torch.randperm(n, generator=g))
        x_epoch = torch.stack([p[v.to(device), rows] for p, v in zip(pools, picks)])  # R x N x f
        order = torch.stack(orders).to(device)  # R x N
        for i in range(steps_per_epoch):
            idx = order[:, i * cfg.batch:(i + 1) * cfg.batch]  # R x B
            x = torch.gather(x_epoch, 1, idx[..., None].expand(-1, -1, dim))
            logits = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
            # Sum of per-repeat mean losses: each repeat's gradient is its own.
            loss = F.cross_entropy(logits.flatten(0, 1), labels[idx].flatten(), reduction="none")
            loss = loss.view(reps, -1).mean(1).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if select:
            with torch.no_grad():
                acc = (ProbeResult(w, b, best_epoch, best_acc).logits(val[0]).argmax(-1) == val[1]).float().mean(1)
                active = since < cfg.patience
                better = (acc > best_acc) & active
                best_w[better], best_b[better] = w.detach()[better], b.detach()[better]
                best_acc[better] = acc[better]
                best_epoch[better] = epoch
                since = torch.where(better, torch.zeros_like(since), since + active.long())
            if not bool((since < cfg.patience).any()):
                break
    if select:
        return ProbeResult(best_w.cpu(), best_b.cpu(), best_epoch.cpu(), best_acc.cpu())
    return ProbeResult(w.detach().cpu(), b.detach().cpu(), torch.full((reps,), cfg.epochs - 1),
                       torch.full((reps,), math.nan))


def topk(result: ProbeResult, features: torch.Tensor, labels: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Top-k accuracy of every repeat (R values in [0, 1])."""
    with torch.no_grad():
        logits = result.logits(features)
        k = min(k, logits.shape[-1])
        hit = (logits.topk(k, dim=-1).indices == labels[None, :, None]).any(-1)
    return hit.float().mean(1)


def group_top1(result: ProbeResult, features: torch.Tensor, labels: torch.Tensor,
               groups: torch.Tensor) -> dict[int, torch.Tensor]:
    """Top-1 of every repeat within each group present (group id -> R values)."""
    with torch.no_grad():
        hit = (result.logits(features).argmax(-1) == labels[None, :]).float()  # R x M
    return {int(g): hit[:, groups == g].mean(1) for g in torch.unique(groups)}


def nearest_neighbor_top1(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                          test_labels: torch.Tensor) -> float:
    """1-NN accuracy: each test row takes the label of the most cosine-similar training row."""
    train = F.normalize(train.float(), dim=1)
    hits = 0
    for start in range(0, test.shape[0], 4096):  # bounded memory against large training sets
        sim = F.normalize(test[start:start + 4096].float(), dim=1) @ train.t()
        hits += int((train_labels[sim.argmax(1)] == test_labels[start:start + 4096]).sum())
    return hits / test.shape[0]
