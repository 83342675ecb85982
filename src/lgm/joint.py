"""Joint multi-backbone distillation: one synthetic set matched on several frozen backbones.

For every backbone k the synthetic head gradient is matched to the real one,
each backbone with its own normalization, input size (``Backbone.preprocess``
resizes the rendered, augmented views to it), feature dimension and random
head; the meta loss is the weighted mean of the per-backbone cosine distances,

    L = sum_k w_k (1 - cos(g_real^k, g_syn^k)) / sum_k w_k.

``--backbone-schedule all`` takes every backbone every step; ``sample`` draws
one backbone per step with probability w_k / sum w (an unbiased estimate of the
same gradient at the cost of a single-backbone step) from an explicit
generator saved in the checkpoint. Within a step every backbone sees the same
real batch (same images, same augmentation) and the same synthetic views.

Each backbone's contribution is backpropagated on its own (scaled by its share
of the loss) and accumulates in the synthetic parameters' gradients, so at most
one backbone's activations are alive at a time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lgm.backbone_spec import weights_record
from lgm.backbones import BACKBONES, Backbone, weights_on_disk
from lgm.config import DistillConfig
from lgm.errors import LgmError, MissingResourceError
from lgm.features import CachedReal, LiveReal
from lgm.matching import head_gradient, sample_head
from lgm.real_side import RealSideChoice, build_real_side, real_aug_config, real_batch_size, resolve_real_side
from lgm.synthetic_side import synthetic_backward

# Seeds of the joint run's extra generators: (seed << 8) | index; 0-6 are taken by the single-backbone run.
SCHEDULE_SEED_INDEX = 31
HEAD_SEED_BASE = 32  # head generator of backbone k >= 1: (seed << 8) | (32 + k); backbone 0 uses the run's "head"
MAX_BACKBONES = 256 - HEAD_SEED_BASE


def check_backbones(specs: list, cfg: DistillConfig) -> None:
    """Unknown names and missing weights of a joint run, all reported at once, before any work starts."""
    if len(specs) > MAX_BACKBONES:
        raise LgmError(f"a joint run takes at most {MAX_BACKBONES} backbones, got {len(specs)}")
    missing = []
    for spec in specs:
        if not isinstance(spec, str):
            continue
        entry = BACKBONES.get(spec)  # unknown names: UnknownNameError listing the known ones
        if cfg.random_init or cfg.weights_for(spec) is not None:
            continue
        if weights_on_disk(spec) is None:
            missing.append(f"{spec} (weights from {entry.info.weights})")
    if missing:
        raise MissingResourceError(
            "weights of backbone(s) not found on disk: " + "; ".join(missing)
            + ". Install them (see `lgm backbones`, column 'on disk'), or run with --random-init "
            "(tests and speed checks only)")


def backbone_specs(backbone, cfg: DistillConfig) -> list:
    """The joint run's backbones as given: names (from the config when ``backbone`` is a name) or objects."""
    if isinstance(backbone, (list, tuple)):
        specs = list(backbone)
    elif isinstance(backbone, str):
        specs = list(cfg.backbones)
    else:
        specs = [backbone]
    if len(specs) != len(cfg.backbones):
        raise LgmError(f"{len(specs)} backbone(s) given but the config names {len(cfg.backbones)}: "
                       f"{', '.join(cfg.backbones)}")
    return specs


def spec_name(spec) -> str:
    return spec if isinstance(spec, str) else spec.name


def load_backbones(specs: list, cfg: DistillConfig, device: torch.device) -> list[Backbone]:
    from lgm.backbones import load_backbone

    return [load_backbone(s, device, cfg.random_init, cfg.weights_for(s), normalization=cfg.normalization,
                          grad_checkpointing=cfg.grad_checkpointing) if isinstance(s, str) else s.to(device)
            for s in specs]


def add_generators(gens, cfg: DistillConfig, device: torch.device) -> None:
    """The joint run's own generators: one head generator per extra backbone, and the schedule's."""
    for k in range(1, len(cfg.backbones)):
        gens.extra[f"head.{k}"] = torch.Generator(device=device).manual_seed((cfg.seed << 8) | (HEAD_SEED_BASE + k))
    if cfg.backbone_schedule == "sample":
        gens.extra["schedule"] = torch.Generator().manual_seed((cfg.seed << 8) | SCHEDULE_SEED_INDEX)


def head_generator(gens, k: int) -> torch.Generator:
    return gens.head if k == 0 else gens.extra[f"head.{k}"]


def cache_file(k: int) -> str:
    """Per-run real-feature cache of the k-th backbone of a joint run."""
    return f"real_features.{k}.safetensors"


class JointReal:
    """The real side of a joint step: one real batch per step, its head gradient on each backbone.

    Live: the images are sampled and augmented once (as ``LiveReal`` does) and
    every active backbone takes its features of those same views. Cached: each
    backbone has its own per-run cache of the same augmented views (same images,
    same crops, row for row), and the same rows are indexed in all of them.
    """

    def __init__(self, backbones: list[Backbone], live: LiveReal | None = None,
                 cached: list[CachedReal] | None = None) -> None:
        if (live is None) == (cached is None):
            raise ValueError("give either a live real side or one cache per backbone")
        if cached is not None:
            if len(cached) != len(backbones) or len({len(c) for c in cached}) != 1:
                raise LgmError("the per-backbone real-feature caches of this run differ in length; delete the "
                               "real_features.*.safetensors files of the run directory to rebuild them")
        self.backbones, self.live, self.cached = backbones, live, cached

    def __len__(self) -> int:
        return len(self.live) if self.live is not None else len(self.cached[0])

    def gradients(self, heads: dict[int, tuple[torch.Tensor, torch.Tensor]], n: int, sample_gen: torch.Generator,
                  aug_gen: torch.Generator) -> dict[int, torch.Tensor]:
        """Head gradient of the step's real batch for each backbone k in ``heads`` (the batch is drawn once)."""
        if self.live is not None:
            live = self.live
            x, y = live.sample_views(n, sample_gen)
            out = {}
            with torch.no_grad(), live.autocast:
                feats = {k: self.backbones[k].features(x) for k in heads}
            for k, (w, b) in heads.items():
                out[k] = head_gradient(feats[k].float(), y, w, b)
            return out
        first = self.cached[0]
        rows = None if n >= len(first) else torch.randperm(len(first), generator=sample_gen)[:n].to(first.device)
        out = {}
        for k, (w, b) in heads.items():
            c = self.cached[k]
            if rows is None:
                out[k] = head_gradient(c.features.float(), c.labels, w, b)
            else:
                out[k] = head_gradient(c.features[rows].float(), c.labels[rows], w, b)
        return out


def build_joint_real(cfg: DistillConfig, ds, backbones: list[Backbone], device: torch.device, autocast,
                     run) -> JointReal:
    # Each backbone's standalone cache where one matches (issue 7); with --real-features live, or auto and no
    # cache at all, the paper's live side; otherwise a per-run cache for every backbone without a standalone one.
    resolved = [] if cfg.real_features == "live" else [resolve_real_side(cfg, ds, bb, None) for bb in backbones]
    if all(choice.mode == "live" for choice, _ in resolved):
        return JointReal(backbones, live=LiveReal(ds.train, cfg.res, cfg.crop, real_aug_config(cfg), backbones[0],
                                                  device, autocast))
    cached = []
    for k, (bb, (choice, cache)) in enumerate(zip(backbones, resolved)):
        if choice.mode == "live":
            choice = RealSideChoice("run-cache", cfg.real_features)
        cached.append(build_real_side(cfg, ds, bb, device, autocast, run, choice, cache, cache_name=cache_file(k)))
    return JointReal(backbones, cached=cached)


def active_backbones(cfg: DistillConfig, gens) -> dict[int, float]:
    """Backbones of this step and the factor each one's loss enters the step's meta loss with."""
    weights = cfg.loss_weights()
    if cfg.backbone_schedule == "all":
        return {k: w for k, w in enumerate(weights) if w > 0}
    if cfg.backbone_schedule == "sample":
        probs = torch.tensor(weights, dtype=torch.float64)
        k = int(torch.multinomial(probs, 1, generator=gens.extra["schedule"]))
        return {k: 1.0}
    raise LgmError(f"unknown --backbone-schedule {cfg.backbone_schedule!r}; choose all or sample")


def joint_synthetic_backward(syn, view_labels: torch.Tensor, backbones: dict[int, Backbone],
                             g_real: dict[int, torch.Tensor], heads: dict[int, tuple[torch.Tensor, torch.Tensor]],
                             scales: dict[int, float], views, step_seed: int, chunk: int,
                             autocast) -> dict[int, torch.Tensor]:
    """Accumulates the gradient of sum_k scales[k] * L_k in the synthetic parameters; returns every L_k.

    All backbones see the same synthetic views (the same step seed); each one's
    loss is backpropagated on its own, so one backbone's activations are alive
    at a time (``chunk`` bounds them further, exactly as for a single backbone).
    """
    losses = {}
    for k, scale in scales.items():
        w, b = heads[k]
        losses[k] = synthetic_backward(syn, view_labels, backbones[k], g_real[k], w, b, views, step_seed, chunk,
                                       autocast, scale=scale)
    return losses


def joint_step(syn, syn_labels: torch.Tensor, num_classes: int, backbones: list[Backbone], real: JointReal,
               optimizer: torch.optim.Optimizer, gens, cfg: DistillConfig, views,
               autocast) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One joint Linear Gradient Matching update: (the step's meta loss, each active backbone's loss by name).

    With one backbone this is ``distill_step`` draw for draw and op for op (same
    generators in the same order, scale 1), so the results are bit-identical.
    """
    scales = active_backbones(cfg, gens)
    # 1. A fresh random head per active backbone, each from its own generator.
    heads = {k: sample_head(num_classes, backbones[k].feature_dim, head_generator(gens, k), cfg.head_init)
             for k in scales}
    # 2. One real batch, its head gradient on every active backbone.
    g_real = real.gradients(heads, real_batch_size(cfg, num_classes), gens.real, gens.aug)
    # 3-4. The same synthetic views on every active backbone; weighted per-backbone losses, one backward each.
    step_seed = int(torch.randint(0, 2**62, (1,), generator=gens.views))
    optimizer.zero_grad(set_to_none=True)
    losses = joint_synthetic_backward(syn, syn_labels.repeat(cfg.augs), dict(enumerate(backbones)), g_real, heads,
                                      scales, views, step_seed, cfg.chunk, autocast)
    optimizer.step()
    total = None
    for k, scale in scales.items():
        term = losses[k] * scale if scale != 1.0 else losses[k]
        total = term if total is None else total + term
    return total, {backbones[k].name: loss for k, loss in losses.items()}


def weights_id(backbone: Backbone, cfg: DistillConfig) -> str:
    """Which weights a backbone ran with: random init, the --weights file, or its default weights' location."""
    if backbone.random_init:
        return "random-init"
    if cfg.weights_for(backbone.name) is not None:
        return f"file:{cfg.weights_for(backbone.name)}"
    try:
        where = weights_on_disk(backbone.name)
    except LgmError:  # an object the registry does not know
        return "caller-provided"
    return f"default:{where}" if where not in (None, True) else "default"


def metric_key(name: str) -> str:
    return "loss/" + re.sub(r"\s", "_", name)


@dataclass(frozen=True)
class JointSummary:
    """What a joint artifact records about its backbones."""

    names: list[str]
    entries: list[dict]

    @classmethod
    def of(cls, backbones: list[Backbone], cfg: DistillConfig) -> "JointSummary":
        weights = cfg.backbone_weights or (1.0,) * len(backbones)
        entries = [{"name": bb.name, "weights": weights_id(bb, cfg), "random_init": bool(bb.random_init),
                    "loss_weight": float(w), "input_size": bb.info.input_size, "feature_dim": bb.feature_dim,
                    "normalization": bb.normalization,
                    # Recorded so that every later command finds (and checks) the same file.
                    **({"weights_file": weights_record(cfg.weights_for(bb.name))}
                       if cfg.weights_for(bb.name) and not bb.random_init else {})}
                   for bb, w in zip(backbones, weights)]
        return cls([bb.name for bb in backbones], entries)
