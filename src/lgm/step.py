"""One Linear Gradient Matching step, the same for every run: one backbone or several, one process or torchrun.

``matching_step`` reads like the paper's Section 3: sample a head (one per
active backbone), take the real gradient, render and augment the synthetic
set, take its gradient, compare by cosine, step. A single-backbone run is a
joint run of one (``lgm.joint`` adds the generators of the other backbones); the two sides live in ``lgm.real_side``
(the real head gradients) and ``lgm.synthetic_side`` (the synthetic views'
meta loss and its backward, chunked and sharded as asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from lgm import real_side, synthetic_side
from lgm.augment import ViewAugmenter
from lgm.backbones import Backbone
from lgm.config import DistillConfig
from lgm.distributed import SINGLE, Shard
from lgm.errors import LgmError
from lgm.features import CachedReal, LiveReal
from lgm.objectives import TrajectoryHeads, step_head
from lgm.synthetic import SyntheticImages

GENERATOR_NAMES = ("init", "head", "aug", "real", "views")


@dataclass
class Generators:
    """Every source of randomness of a run, each an explicit torch.Generator.

    ``real`` indexes host memory and ``views`` draws one seed per step for the
    synthetic views (see ``ViewAugmenter``), both on the CPU so that reading
    them never waits for the device; the others draw on the compute device so
    that noise and crops never cross the bus.
    """

    init: torch.Generator
    head: torch.Generator
    aug: torch.Generator
    real: torch.Generator
    views: torch.Generator
    extra: dict[str, torch.Generator] = field(default_factory=dict)
    """Generators of optional features (joint runs: per-backbone heads, the backbone schedule)."""

    @classmethod
    def from_seed(cls, seed: int, device: torch.device) -> "Generators":
        gens = {}
        for i, name in enumerate(GENERATOR_NAMES):
            g = torch.Generator(device="cpu" if name in ("real", "views") else device)
            g.manual_seed((seed << 8) | i)
            gens[name] = g
        return cls(**gens)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        states = {name: getattr(self, name).get_state() for name in GENERATOR_NAMES}
        return states | {name: g.get_state() for name, g in self.extra.items()}

    def load_state_tensors(self, states: dict[str, torch.Tensor]) -> None:
        missing = [n for n in (*GENERATOR_NAMES, *self.extra) if n not in states]
        if missing:
            raise LgmError(f"the checkpoint lacks generator state(s) {', '.join(missing)} (written by an older lgm); "
                           "start a new run directory")
        for name in GENERATOR_NAMES:
            getattr(self, name).set_state(states[name].cpu())
        for name, g in self.extra.items():
            g.set_state(states[name].cpu())


def make_optimizer(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=0.0)


def regrow_optimizer(old: torch.optim.Adam, syn: SyntheticImages, cfg: DistillConfig) -> torch.optim.Adam:
    """A new Adam over the grown parameter set; moments carried over unless resetting (authors)."""
    new = make_optimizer(list(syn.parameters()), cfg.lr)
    if not cfg.reset_adam_on_growth:
        for p in syn.parameters():
            if p in old.state:
                new.state[p] = old.state[p]
    return new


def active_backbones(cfg: DistillConfig, gens) -> dict[int, float]:
    """Backbones of this step and the factor each one's loss enters the step's meta loss with.

    A single-backbone run is a joint run of one under the ``all`` schedule (it
    has no schedule generator, whatever its config says).
    """
    weights = cfg.loss_weights()
    if cfg.backbone_schedule == "all" or not cfg.joint:
        return {k: w for k, w in enumerate(weights) if w > 0}
    if cfg.backbone_schedule == "sample":
        probs = torch.tensor(weights, dtype=torch.float64)
        k = int(torch.multinomial(probs, 1, generator=gens.extra["schedule"]))
        return {k: 1.0}
    raise LgmError(f"unknown --backbone-schedule {cfg.backbone_schedule!r}; choose all or sample")


def head_generator(gens, k: int) -> torch.Generator:
    return gens.head if k == 0 else gens.extra[f"head.{k}"]


def matching_step(
    syn: SyntheticImages,
    syn_labels: torch.Tensor,
    num_classes: int,
    backbones: Sequence[Backbone],
    real: real_side.RealSide,
    optimizer: torch.optim.Optimizer,
    gens: Generators,
    cfg: DistillConfig,
    views: ViewAugmenter,
    autocast,
    shard: Shard = SINGLE,
    trajectory: TrajectoryHeads | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One update: (the step's meta loss, each active backbone's loss by name in a joint run); device tensors.

    With a ``shard`` of a torchrun group, this process handles its share of the
    real batch and of the synthetic views; every process ends with the same
    parameters. Draws, in order: the schedule (joint ``sample``), one head per
    active backbone, the real batch, the views' seed; with one backbone these
    are the draws of a single-backbone run, op for op.
    """
    scales = active_backbones(cfg, gens)
    # 1. A fresh random linear head per active backbone, each from its own generator (with --head-source
    #    trajectory, one backbone: a snapshot of a probe trained on the real features, lgm.objectives).
    heads = {k: step_head(num_classes, backbones[k].feature_dim, head_generator(gens, k), cfg.head_init,
                          trajectory if k == 0 else None)
             for k in scales}
    # 2. Real side: one real batch (N*A images, each augmented once, by default), its head gradient on each.
    g_real = real.gradients(heads, real_side.real_batch_size(cfg, num_classes), gens.real, gens.aug, shard)
    # 3-4. Synthetic side: render, A independently augmented views of every image, features with autograd,
    #      cosine distance between the two head gradients, backprop to the image parameters (every backbone).
    step_seed = int(torch.randint(0, 2**62, (1,), generator=gens.views))
    optimizer.zero_grad(set_to_none=True)
    terms = [synthetic_side.Matched(backbones[k], g_real[k], *heads[k], scale) for k, scale in scales.items()]
    losses = synthetic_side.matched_backward(syn, syn_labels.repeat(cfg.augs), terms, views, step_seed, cfg.chunk,
                                             autocast, shard)
    optimizer.step()
    total = None
    for loss, scale in zip(losses, scales.values()):
        term = loss * scale if scale != 1.0 else loss
        total = term if total is None else total + term
    parts = {backbones[k].name: loss for k, loss in zip(scales, losses)} if cfg.joint else {}
    return total, parts


def distill_step(syn: SyntheticImages, syn_labels: torch.Tensor, num_classes: int, backbone: Backbone,
                 real: LiveReal | CachedReal | real_side.RealSide, optimizer: torch.optim.Optimizer,
                 gens: Generators, cfg: DistillConfig, views: ViewAugmenter, autocast,
                 shard: Shard = SINGLE, trajectory: TrajectoryHeads | None = None) -> torch.Tensor:
    """``matching_step`` of one backbone (the real side may be a bare ``LiveReal``/``CachedReal``); its loss."""
    if isinstance(real, LiveReal):
        real = real_side.RealSide([backbone], live=real)
    elif isinstance(real, CachedReal):
        real = real_side.RealSide([backbone], cached=[real])
    return matching_step(syn, syn_labels, num_classes, [backbone], real, optimizer, gens, cfg, views, autocast,
                         shard, trajectory)[0]
