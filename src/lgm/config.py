"""Typed, frozen run configurations; every run directory holds the resolved one as JSON."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from lgm.errors import LgmError
from lgm.synthetic.pyramid import default_grow_every, num_levels_for

# Keys that say how a run is executed, not what it computes: they may change
# between a run and its resumption and are left out of the config hash.
# grad_checkpointing only trades compute for memory (same numbers), so it is run control too.
# snapshot_every only writes pictures of the images on the way (rendering draws no random numbers).
RUN_CONTROL_KEYS = ("device", "data_root", "checkpoint_every", "progress", "grad_checkpointing", "snapshot_every")


@dataclass(frozen=True)
class DistillConfig:
    """Linear Gradient Matching settings (defaults: SPEC §2-4, the paper's and authors' values)."""

    dataset: str
    """Dataset name (see `lgm datasets`)."""
    backbone: str
    """Backbone name (see `lgm backbones`)."""
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
    clamp_crop: bool = True
    """Clamp random-resized-crop boxes to the image (torchvision); --no-clamp-crop reproduces the authors'."""
    noise_std: float = 0.2
    """Std of the Gaussian noise augmentation (pixel space, before normalization)."""
    noise_mean: float = 0.0
    """Mean of the noise (0.5 reproduces the authors' code before their fix)."""
    real_features: Literal["live", "cached"] = "live"
    """Real side: live backbone passes on sampled images (paper), or a per-run cache of augmented views' features."""
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
    weights: str | None = None
    """Path of a local weights file for the backbone (default: its installed/cached weights)."""
    normalization: Literal["native", "imagenet"] = "native"
    """Backbone input statistics: its own (native), or ImageNet's for every backbone (the authors' code)."""
    grad_checkpointing: bool = False
    """Recompute backbone activations in the backward pass: less memory, more compute, same result."""
    chunk: int = 0
    """Synthetic views with activations in flight (0 = all at once); the step stays exact, memory is bounded."""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """Mixed precision: auto = bf16 autocast on CUDA, full precision on CPU."""
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

    def resolved(self) -> "DistillConfig":
        """The same config with automatic values filled in."""
        if self.grow_every == 0 and self.steps > 0:
            return dataclasses.replace(self, grow_every=default_grow_every(self.steps))
        return self

    def validate(self) -> None:
        problems = []
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
        if self.real_gradient == "full" and self.real_features != "cached":
            problems.append("--real-gradient full needs --real-features cached (the exact gradient runs over the cache)")
        if problems:
            raise LgmError("invalid distillation settings:\n  " + "\n  ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
