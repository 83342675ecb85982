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
one backbone's activations are alive at a time. The step itself is the one of
every run (``lgm.step.matching_step``: a single backbone is a joint run of
one); this module holds what only joint runs have: several backbones to check
and load, a head generator per extra backbone, the schedule, the summary.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from lgm import real_side, step
from lgm.backbone_spec import weights_record
from lgm.backbones import BACKBONES, Backbone, weights_on_disk
from lgm.config import DistillConfig
from lgm.deprecation import moved_names, replaced
from lgm.errors import LgmError, MissingResourceError
from lgm.synthetic_side import Matched, matched_backward

# The step of every run lives in lgm.step (a single backbone is a joint run of one); so does its real side.
__getattr__ = moved_names(__name__, {"JointReal": (real_side, "RealSide"), "active_backbones": step,
                                     "head_generator": step})

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


def cache_file(k: int) -> str:
    """Per-run real-feature cache of the k-th backbone of a joint run (``lgm.real_side.run_cache_file``)."""
    return real_side.joint_cache_file(k)


def build_joint_real(cfg: DistillConfig, ds, backbones: list[Backbone], device: torch.device, autocast,
                     run) -> real_side.RealSide:
    """Deprecated: ``lgm.real_side.choose_real_sides`` then ``build_real_sides``."""
    replaced("lgm.joint.build_joint_real", "lgm.real_side.choose_real_sides + build_real_sides")
    choices = real_side.choose_real_sides(cfg, ds, backbones, None)
    return real_side.build_real_sides(cfg, ds, backbones, choices, device, autocast, run)


def joint_synthetic_backward(syn, view_labels: torch.Tensor, backbones: dict[int, Backbone],
                             g_real: dict[int, torch.Tensor], heads: dict[int, tuple[torch.Tensor, torch.Tensor]],
                             scales: dict[int, float], views, step_seed: int, chunk: int,
                             autocast) -> dict[int, torch.Tensor]:
    """``lgm.synthetic_side.matched_backward`` with the terms given as dicts by backbone index; every L_k by index."""
    terms = [Matched(backbones[k], g_real[k], *heads[k], scale) for k, scale in scales.items()]
    return dict(zip(scales, matched_backward(syn, view_labels, terms, views, step_seed, chunk, autocast)))


def joint_step(syn, syn_labels: torch.Tensor, num_classes: int, backbones: list[Backbone], real,
               optimizer: torch.optim.Optimizer, gens, cfg: DistillConfig, views,
               autocast) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Deprecated: ``lgm.step.matching_step``, the one step of every run."""
    replaced("lgm.joint.joint_step", "lgm.step.matching_step")
    return step.matching_step(syn, syn_labels, num_classes, backbones, real, optimizer, gens, cfg, views, autocast)


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
