"""Typed, frozen run configurations; every run directory holds the resolved one as JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from lgm.backbone_spec import named_path
from lgm.errors import LgmError, UsageError
from lgm.pyramid_schedule import default_grow_every, num_levels_for

# Keys that say how a run is executed, not what it computes: they may change
# between a run and its resumption and are left out of the config hash.
# grad_checkpointing only trades compute for memory (same numbers), so it is run control too.
# snapshot_every only writes pictures of the images on the way (rendering draws no random numbers).
# real_cache and cache_dir only say where a feature cache is found; which cache a run used (its id, a hash of
# everything that determines its features) is recorded in the run's real_side.json and checked on resume.
RUN_CONTROL_KEYS = ("device", "data_root", "checkpoint_every", "progress", "grad_checkpointing", "real_cache",
                    "cache_dir", "compile", "snapshot_every")

# Keys of joint multi-backbone runs. A single-backbone config leaves them out of
# its JSON and hash while they hold their defaults, so configs (and hashes) of
# single-backbone runs made before joint distillation existed are unchanged.
JOINT_KEYS = ("backbone_weights", "backbone_schedule")

# Keys added after runs existed: left out of the JSON and hash while they hold their defaults, so configs (and
# hashes) of earlier runs are unchanged.
LATER_KEYS = ("real_aug", "head_source", "trajectory_steps")


@dataclass(frozen=True)
class DistillConfig:
    """Linear Gradient Matching settings (defaults: SPEC §2-4, the paper's and authors' values)."""

    dataset: str
    """Dataset name (see `lgm datasets`)."""
    backbone: str | tuple[str, ...]
    """Backbone name (see `lgm backbones`); several (repeat the flag, or a comma list) for joint distillation."""
    ipc: int = 1
    """Synthetic images per class."""
    steps: int = 5000
    """Optimization steps (Adam updates)."""
    augs: int = 10
    """Augmented views of the synthetic set per step (A); the real batch holds ipc*A*C images."""
    lr: float = 2e-3
    """Adam learning rate (betas 0.9/0.999, no weight decay, constant)."""
    param: Literal["pyramid", "pixels"] = "pyramid"
    """Image parameterization: multi-scale pyramid (default) or raw pixels (ablation)."""
    init: Literal["noise", "real"] = "noise"
    """Start from noise (paper) or from ipc random real training images per class (ours; recorded in the artifact)."""
    decorrelate: bool = True
    """Optimize in a decorrelated color space (--no-decorrelate for the ablation)."""
    aug: Literal["standard", "none"] = "standard"
    """Differentiable augmentation: flip + random resized crop + noise, or none (resize only)."""
    res: int = 256
    """Resolution at which synthetic images are stored and rendered (power of two for the pyramid)."""
    crop: int = 224
    """Side of the augmented crop fed to the backbone."""
    seed: int = 0
    """Seed of every generator of the run (init, heads, augmentation, real sampling)."""
    grow_every: int = 0
    """Steps between pyramid levels; 0 = auto: 200, scaled by steps/5000 for runs shorter than 5000 steps."""
    reset_adam_on_growth: bool = True
    """Reset Adam's moments when a pyramid level is added (authors); --no-reset-adam-on-growth keeps them."""
    head_init: Literal["normal001", "normal1", "torch"] = "normal001"
    """Random head per step: N(0, 0.01^2) (authors' code), N(0, 1) (paper text), or nn.Linear's default."""
    head_source: Literal["random", "trajectory"] = "random"
    """Head per step: a fresh random one (--head-init; the paper), or one drawn from snapshots of a probe trained
    on the real feature cache (trajectory: ours, needs --real-features cached; see lgm.objectives)."""
    trajectory_steps: tuple[int, ...] = (0, 5, 20, 50, 100)
    """--head-source trajectory: the Adam steps (lr 3.9e-4, batches of 100, from zero) of the real-feature probe
    at which its head is kept."""
    clamp_crop: bool = True
    """Clamp random-resized-crop boxes to the image (torchvision); --no-clamp-crop reproduces the authors'."""
    noise_std: float = 0.2
    """Std of the Gaussian noise augmentation (pixel space, before normalization)."""
    noise_mean: float = 0.0
    """Mean of the noise (0.5 reproduces the authors' code before their fix)."""
    real_aug: Literal["same", "none"] = "same"
    """Real views: through the synthetic side's augmentation (same: SPEC, the paper), or whole images resized to
    --crop (none: ours, the probe's test view when --res equals --crop; 2 points better on the demo's pair)."""
    real_features: Literal["auto", "live", "cached"] = "auto"
    """Real side. live: backbone passes on sampled images (paper). cached: a complete matching cache from
    `lgm cache-features` (--real-cache, or found under --cache-dir), else a per-run cache of --cache-views views.
    auto: such a standalone cache when one exists, else live (else the per-run cache with --real-gradient full)."""
    real_cache: str | None = None
    """Directory of a cache built by `lgm cache-features` (refused unless it matches backbone/dataset/augmentation)."""
    cache_dir: str | None = None
    """Root searched for standalone real-feature caches (default: $LGM_CACHE_DIR, else ~/.cache/lgm)."""
    real_batch: int = 0
    """Real images (or cached views) per step; 0 = ipc*augs*classes, the paper's batch."""
    real_gradient: Literal["batch", "full"] = "batch"
    """Real gradient per step: from a sampled batch (--real-batch), or exact over the whole feature cache (needs cached)."""
    cache_views: int = 2
    """Augmented views per training image in the feature cache (--real-features cached)."""
    cache_per_class: int = 0
    """Training images per class in the feature cache (0 = all; a seeded stratified subset otherwise)."""
    on_bad_image: Literal["fail", "skip"] = "fail"
    """Unreadable/corrupt image files: stop naming them, or leave them out with a warning listing them."""
    random_init: bool = False
    """Use a randomly initialized backbone (tests/benchmarks only; recorded in every artifact)."""
    weights: str | tuple[str, ...] | None = None
    """Local weights file: PATH for the backbone, or NAME=PATH per backbone of a joint run (--weights A=x B=y;
    backbones not named use their installed/cached weights). Default: the installed/cached weights."""
    normalization: Literal["native", "imagenet"] = "native"
    """Backbone input statistics: its own (native), or ImageNet's for every backbone (the authors' code)."""
    grad_checkpointing: bool = False
    """Recompute backbone activations in the backward pass: less memory, more compute, same result."""
    chunk: int = 0
    """Synthetic views with activations in flight (0 = all at once); the step stays exact, memory is bounded."""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """Mixed precision: auto = bf16 autocast on CUDA, full precision on CPU."""
    compile: bool = False
    """torch.compile the backbone (faster steps on CUDA after a compilation warm-up; same numbers up to rounding)."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    data_root: str | None = None
    """Directory holding datasets (default: $LGM_DATA_ROOT, then each dataset's standard location)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (a checkpoint is also written on SIGTERM/SIGINT and at the end)."""
    progress: bool = True
    """Show a progress bar."""
    snapshot_every: int = 0
    """Steps between uint8 snapshots of the images in <out>/snapshots/ (for `lgm export --timelapse`); 0 = off."""
    backbone_weights: tuple[float, ...] = ()
    """Joint runs: weight of each backbone's cosine distance in the meta loss (default: equal), in --backbone order."""
    backbone_schedule: Literal["all", "sample"] = "all"
    """Joint runs: every backbone every step (all), or one per step drawn with probability ~ its weight (sample)."""

    def __post_init__(self) -> None:
        # Normal form: one name stays a string (as before joint runs existed); a list, a tuple or a
        # comma list of names becomes a tuple (a joint run, even of one backbone).
        bb = self.backbone
        if isinstance(bb, str) and "," in bb:
            bb = tuple(n.strip() for n in bb.split(",") if n.strip())  # "B," is a joint run of one
        elif isinstance(bb, list):
            bb = tuple(bb)
        object.__setattr__(self, "backbone", bb)
        if isinstance(self.trajectory_steps, (list, tuple)):  # JSON gives a list; the hash needs the normal form
            object.__setattr__(self, "trajectory_steps", tuple(int(s) for s in self.trajectory_steps))
        if isinstance(self.backbone_weights, (list, tuple)):
            object.__setattr__(self, "backbone_weights", tuple(float(w) for w in self.backbone_weights))
        object.__setattr__(self, "weights", self._normal_weights())

    def _normal_weights(self) -> str | tuple[str, ...] | None:
        """One form per meaning, so that equal runs hash equally: a single-backbone run keeps the plain path
        (as before joint runs took files); a joint run keeps ``NAME=PATH`` entries in --backbone order."""
        w = self.weights
        if w is None or w == ():
            return None
        entries = (w,) if isinstance(w, str) else tuple(w)
        names = self.backbones
        split = [named_path(e, names) for e in entries]
        if not self.joint:
            if len(split) != 1:
                return entries  # refused by validate()
            return split[0][1]
        if len(names) == 1:  # a joint run of one: a bare path can only be its backbone's
            split = [(n or names[0], p) for n, p in split]
        if any(n is None for n, _ in split):
            return entries  # refused by validate()
        order = {n: i for i, n in enumerate(names)}
        split.sort(key=lambda np: order.get(np[0], len(order)))
        return tuple(f"{n}={p}" for n, p in split)

    def weights_for(self, name: str) -> str | None:
        """The weights file given for backbone ``name``, or None (its installed/cached weights)."""
        if self.weights is None:
            return None
        if isinstance(self.weights, str):
            return self.weights if not self.joint or name in self.backbones else None
        for entry in self.weights:
            n, p = named_path(entry, self.backbones)
            if n == name:
                return p
        return None

    @property
    def backbones(self) -> tuple[str, ...]:
        """The backbone name(s), always as a tuple."""
        return (self.backbone,) if isinstance(self.backbone, str) else self.backbone

    @property
    def joint(self) -> bool:
        """A joint run: the backbone was given as a list (of any length)."""
        return not isinstance(self.backbone, str)

    def loss_weights(self) -> tuple[float, ...]:
        """Each backbone's share of the meta loss (normalized to sum 1)."""
        raw = self.backbone_weights or (1.0,) * len(self.backbones)
        total = sum(raw)
        return tuple(w / total for w in raw)

    def resolved(self) -> "DistillConfig":
        """The same config with automatic values filled in."""
        if self.grow_every == 0 and self.steps > 0:
            return dataclasses.replace(self, grow_every=default_grow_every(self.steps))
        return self

    def validate(self) -> None:
        problems = nonfinite_options(self)
        for key in ("ipc", "steps", "augs", "res", "crop", "checkpoint_every", "cache_views"):
            if getattr(self, key) <= 0:
                problems.append(f"--{key.replace('_', '-')} must be positive, got {getattr(self, key)}")
        if not self.lr > 0:
            problems.append(f"--lr must be positive, got {self.lr}")
        if self.grow_every < 0:
            problems.append(f"--grow-every must be >= 0 (0 = auto), got {self.grow_every}")
        for key in ("real_batch", "cache_per_class", "chunk", "snapshot_every"):
            if getattr(self, key) < 0:
                problems.append(f"--{key.replace('_', '-')} must be >= 0, got {getattr(self, key)}")
        if self.noise_std < 0:
            problems.append(f"--noise-std must be >= 0, got {self.noise_std}")
        if self.param == "pyramid" and self.res > 0:
            try:
                num_levels_for(self.res)
            except ValueError:
                problems.append(f"--res must be a power of two for the pyramid parameterization, got {self.res}")
        if self.crop > 0 and self.res > 0 and self.crop > self.res:
            problems.append(f"--crop ({self.crop}) cannot exceed --res ({self.res})")
        if self.real_gradient == "full" and self.real_features == "live":
            problems.append("--real-gradient full needs --real-features cached or auto (the exact gradient runs "
                            "over a feature cache)")
        if self.real_cache is not None and self.real_features == "live":
            problems.append("--real-cache names a feature cache but --real-features is live; use cached or auto")
        if self.head_source not in ("random", "trajectory"):
            problems.append(f"--head-source must be random or trajectory, got {self.head_source!r}")
        elif self.head_source == "trajectory":
            if not self.trajectory_steps or min(self.trajectory_steps) < 0:
                problems.append(f"--trajectory-steps must be non-negative step counts, got {list(self.trajectory_steps)}")
            if self.real_features == "live" or self.joint:
                problems.append("--head-source trajectory trains its probe on the real feature cache: it needs "
                                "--real-features cached (or auto with a cache) and one backbone")
        problems += self._joint_problems()
        if problems:
            raise UsageError("invalid distillation settings:\n  " + "\n  ".join(problems))

    def _joint_problems(self) -> list[str]:
        import math

        problems = []
        names = self.backbones
        if not names or any(not n for n in names):
            problems.append(f"--backbone needs one or more non-empty names, got {self.backbone!r}")
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            problems.append(f"--backbone names {', '.join(dups)} more than once; each backbone may appear once")
        weights = self.backbone_weights
        if weights:
            if len(weights) != len(names):
                problems.append(f"--backbone-weights has {len(weights)} value(s) for {len(names)} backbone(s) "
                                f"({', '.join(names)}); give one weight per backbone, in --backbone order")
            bad = [w for w in weights if not (math.isfinite(w) and w >= 0)]
            if bad:
                problems.append(f"--backbone-weights must be finite and non-negative, got {list(weights)}")
            elif not sum(weights) > 0:
                problems.append(f"--backbone-weights must have a positive sum, got {list(weights)}")
        problems += self._weights_problems()
        return problems

    def _weights_problems(self) -> list[str]:
        if self.weights is None:
            return []
        names = self.backbones
        entries = (self.weights,) if isinstance(self.weights, str) else self.weights
        if not self.joint:
            if len(entries) != 1:
                return [f"--weights gives {len(entries)} files for the one backbone {names[0]}: {list(entries)}"]
            return []
        problems, seen = [], set()
        for entry in entries:
            n, p = named_path(entry, names)
            if n is None:
                problems.append(f"--weights {entry}: {len(names)} backbones are given ({', '.join(names)}); say "
                                "which one the file is for with --weights NAME=PATH")
            elif n in seen:
                problems.append(f"--weights gives two files for {n}")
            seen.add(n)
        return problems

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for key in LATER_KEYS + (() if self.joint else JOINT_KEYS):
            if d[key] == OMITTED_DEFAULTS[key]:
                d.pop(key)
        return d

    def semantic(self) -> dict[str, Any]:
        """The settings that determine the result (run-control keys dropped)."""
        d = self.resolved().to_dict()
        for key in RUN_CONTROL_KEYS:
            d.pop(key)
        return d

    def hash(self) -> str:
        blob = json.dumps(self.semantic(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise LgmError(f"unknown config keys: {', '.join(sorted(unknown))}")
        return cls(**d)


def nonfinite_options(cfg) -> list[str]:
    """A problem line for every float option of the dataclass ``cfg`` that is NaN or infinite."""
    import math

    return [f"--{f.name.replace('_', '-')} must be a finite number, got {getattr(cfg, f.name)}"
            for f in dataclasses.fields(cfg)
            if isinstance(getattr(cfg, f.name), float) and not math.isfinite(getattr(cfg, f.name))]


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


OMITTED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(DistillConfig) if f.name in JOINT_KEYS + LATER_KEYS}
