"""Variants of the matching objective: which heads the gradients are matched at.

Distillation's objective (``lgm.matching``) matches the head gradient of the
synthetic set to the real one at one fresh random head per step, N(0, 0.01²) by
default. Under such small heads the softmax is nearly flat and the gradient
sees the points mostly through their class means, so the objective is, to first
order, class-mean matching. The probe that is later trained on the set does not
stay there: it moves along a trajectory of heads whose gradients weigh the hard
rows. The variants here choose the heads differently:

- ``heads`` K: K heads per step, the loss averaged over them;
- ``head_source="trajectory"``: the heads a probe visits when trained on the
  real features (Adam from zero at the probe protocol's learning rate, batches
  of the protocol's size, the head kept at ``trajectory_steps``), each step one
  drawn snapshot (K with ``heads``; every snapshot with ``heads=0``), plus
  optional Gaussian ``head_noise`` on W;
- ``unroll`` J: besides each drawn head, J further matching points, the heads
  reached from it by J sign steps (Adam's first step) of size ``unroll_lr``
  along the synthetic set's own gradient: where a probe trained on the set goes;
- ``head_scale``: the random heads multiplied by a constant.

:class:`MatchObjective` holds the settings (its defaults are distillation's
objective, drawn bit for bit as ``lgm.matching.sample_head`` draws it);
:class:`HeadSampler` draws the heads of a step, with the real gradient of every
noise-free trajectory snapshot computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from lgm.errors import LgmError, UsageError
from lgm.matching import HeadInit, head_gradient, meta_loss, sample_head

HeadSource = Literal["random", "trajectory"]

# The probe protocol's (SPEC §6) Adam learning rate for batches of 100: 0.001 * 100 / 256.
PROBE_LR = 1e-3 * 100 / 256
PROBE_BATCH = 100


@dataclass(frozen=True)
class MatchObjective:
    """Where the head gradients are matched (defaults: distillation's one random head per step)."""

    heads: int = 1
    """Heads per step, loss averaged (trajectory: 0 = every snapshot every step)."""
    head_source: HeadSource = "random"
    """random: fresh heads from --head-init; trajectory: snapshots of a probe trained on the real features."""
    head_scale: float = 1.0
    """Random heads multiplied by this (1 = --head-init as it is)."""
    trajectory_steps: tuple[int, ...] = (0, 5, 20, 50, 100)
    """Adam steps of the real-feature probe at which its head is kept (0 = its start, the zero head)."""
    head_noise: float = 0.0
    """Std of Gaussian noise added to a snapshot's W (absolute units; 0.01 on snapshot 0 is the default head)."""
    unroll: int = 0
    """Extra matching points per head: the heads after 1..unroll sign steps along the synthetic gradient."""
    unroll_lr: float = 0.02
    """Size of each unroll step per coordinate (0.02 ~ 50 steps of the probe's Adam at 3.9e-4)."""

    def check(self) -> None:
        problems = []
        if self.heads < 0 or (self.heads == 0 and self.head_source != "trajectory"):
            problems.append(f"heads must be >= 1 (0 only with head_source trajectory), got {self.heads}")
        if self.head_source not in ("random", "trajectory"):
            problems.append(f"head_source must be random or trajectory, got {self.head_source!r}")
        if not self.head_scale > 0:
            problems.append(f"head_scale must be positive, got {self.head_scale}")
        if self.head_source == "trajectory" and (not self.trajectory_steps or min(self.trajectory_steps) < 0):
            problems.append(f"trajectory_steps must be non-negative step counts, got {self.trajectory_steps}")
        if self.head_noise < 0 or self.unroll < 0 or not self.unroll_lr > 0:
            problems.append(f"head_noise and unroll must be >= 0 and unroll_lr positive, got {self.head_noise}, "
                            f"{self.unroll}, {self.unroll_lr}")
        if problems:
            raise UsageError("bad matching objective: " + "; ".join(problems))

    @property
    def is_default(self) -> bool:
        return self == MatchObjective()

    def describe(self) -> str:
        if self.head_source == "random":
            what = f"{self.heads} random head(s) per step" + (f", x{self.head_scale:g}" if self.head_scale != 1 else "")
        else:
            what = (f"{'every' if self.heads == 0 else self.heads} trajectory snapshot(s) per step (steps "
                    f"{','.join(map(str, self.trajectory_steps))}" + (f", noise {self.head_noise:g}" if self.head_noise
                                                                      else "") + ")")
        return what + (f", {self.unroll} unroll step(s) of {self.unroll_lr:g}" if self.unroll else "")


def probe_trajectory(real: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: tuple[int, ...],
                     generator: torch.Generator, lr: float = PROBE_LR,
                     batch: int = PROBE_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The heads (W, b) of a probe trained on ``real`` after each of ``steps`` Adam steps (sorted, unique).

    The probe is the evaluation's: zero start, Adam at ``lr`` (constant: the protocol's cosine decay spans
    1000 epochs and has barely begun over the steps that matter), cross-entropy on shuffled batches of
    ``batch`` rows drawn from ``generator`` (a new permutation whenever one runs out).
    """
    keep = sorted(set(int(s) for s in steps))
    device = real.device
    w = torch.zeros(num_classes, real.shape[1], device=device, requires_grad=True)
    b = torch.zeros(num_classes, device=device, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    n = real.shape[0]
    batch = min(batch, n)
    order, pos = torch.randperm(n, generator=generator, device=generator.device).to(device), 0
    snaps = []
    for step in range(keep[-1] + 1):
        if step == keep[len(snaps)]:
            snaps.append((w.detach().clone(), b.detach().clone()))
            if len(snaps) == len(keep):
                break
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=generator, device=generator.device).to(device), 0
        idx = order[pos:pos + batch]
        pos += batch
        loss = F.cross_entropy(real[idx].float() @ w.t() + b, labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return snaps


class HeadSampler:
    """Draws each step's heads for a :class:`MatchObjective`.

    ``real_gradient(w, b)`` gives the real head gradient at a head (the full gradient, in the ceiling);
    :meth:`draw` returns (w, b, g_real) triples, g_real precomputed for noise-free trajectory snapshots.
    """

    def __init__(self, objective: MatchObjective, num_classes: int, feature_dim: int, head_init: HeadInit,
                 real_gradient: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 snapshots: list[tuple[torch.Tensor, torch.Tensor]] | None = None):
        objective.check()
        self.obj, self.num_classes, self.feature_dim, self.head_init = objective, num_classes, feature_dim, head_init
        self.real_gradient = real_gradient
        self.snapshots = snapshots or []
        if objective.head_source == "trajectory" and not self.snapshots:
            raise LgmError("head_source trajectory needs the probe's snapshots (lgm.objectives.probe_trajectory)")
        self._cached = ([real_gradient(w, b) for w, b in self.snapshots]
                        if objective.head_source == "trajectory" and not objective.head_noise else None)

    def draw(self, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        obj = self.obj
        out = []
        if obj.head_source == "random":
            for _ in range(obj.heads):
                w, b = sample_head(self.num_classes, self.feature_dim, generator, self.head_init)
                if obj.head_scale != 1.0:
                    w, b = w * obj.head_scale, b * obj.head_scale
                with torch.no_grad():
                    out.append((w, b, self.real_gradient(w, b)))
            return out
        picks = (range(len(self.snapshots)) if obj.heads == 0 else
                 torch.randint(len(self.snapshots), (obj.heads,), generator=generator,
                               device=generator.device).tolist())
        for i in picks:
            w, b = self.snapshots[i]
            if self._cached is not None:
                out.append((w, b, self._cached[i]))
                continue
            w = w + obj.head_noise * torch.randn(w.shape, generator=generator, device=generator.device,
                                                 dtype=w.dtype).to(w.device)
            with torch.no_grad():
                out.append((w, b, self.real_gradient(w, b)))
        return out


def unrolled_heads(syn: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, b: torch.Tensor, steps: int,
                   lr: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The heads after 1..``steps`` sign steps of size ``lr`` along the (detached) synthetic gradient."""
    out = []
    z = syn.detach()
    c, f = w.shape
    for _ in range(steps):
        g = head_gradient(z, labels, w, b)
        w = w - lr * torch.sign(g[:c * f]).view(c, f)
        b = b - lr * torch.sign(g[c * f:])
        out.append((w, b))
    return out


def objective_loss(sampler: HeadSampler, generator: torch.Generator, syn: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """One step's meta loss of the free points ``syn``: the mean over the drawn heads (and their unrolled
    heads) of 1 - cos between the real and the synthetic head gradients."""
    obj = sampler.obj
    losses = []
    for w, b, g_real in sampler.draw(generator):
        losses.append(meta_loss(g_real, head_gradient(syn, labels, w, b)))
        for wj, bj in unrolled_heads(syn, labels, w, b, obj.unroll, obj.unroll_lr) if obj.unroll else ():
            with torch.no_grad():
                gj = sampler.real_gradient(wj, bj)
            losses.append(meta_loss(gj, head_gradient(syn, labels, wj, bj)))
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()


# --- image space (lgm distill --head-source trajectory) ---------------------------------------------------------

# Seed index of the trajectory probe's batch order: (seed << 8) | 7 (0-6 are the run's other generators).
TRAJECTORY_SEED_INDEX = 7


@dataclass
class TrajectoryHeads:
    """A run's trajectory snapshots, stacked (S x C x f, S x C) on the device: drawing one is an index on the
    device, so the step never waits for the host."""

    w: torch.Tensor
    b: torch.Tensor

    @classmethod
    def train(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: tuple[int, ...],
              seed: int) -> "TrajectoryHeads":
        g = torch.Generator(device=features.device).manual_seed((seed << 8) | TRAJECTORY_SEED_INDEX)
        snaps = probe_trajectory(features, labels, num_classes, steps, g)  # batches cast to fp32 one at a time
        return cls(torch.stack([w for w, _ in snaps]), torch.stack([b for _, b in snaps]))

    def draw(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.randint(self.w.shape[0], (1,), generator=generator, device=generator.device).to(self.w.device)
        return self.w.index_select(0, i)[0], self.b.index_select(0, i)[0]


def step_head(num_classes: int, feature_dim: int, generator: torch.Generator, head_init: HeadInit,
              trajectory: TrajectoryHeads | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The head of one distillation step: ``sample_head`` (the paper's), or a drawn trajectory snapshot."""
    if trajectory is None:
        return sample_head(num_classes, feature_dim, generator, head_init)
    return trajectory.draw(generator)
