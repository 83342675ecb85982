"""The real side of a step: which one a run uses, building it, and the record of the choice.

``--real-features`` picks live features (a backbone pass per real view and
step), a per-run cache (``real_features.safetensors`` in the run directory) or
a standalone cache (``lgm cache-features``, ``lgm.real_cache``);
``resolve_real_side`` makes the choice (a resumed run keeps the one recorded in
``real_side.json``) and ``build_real_side`` returns the object the step asks
for a head gradient (``lgm.features``).
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from lgm.artifacts import atomic_save_tensors, load_tensors, read_json_object
from lgm.augment import AugmentConfig
from lgm.backbones import Backbone
from lgm.config import DistillConfig
from lgm.data import ImageDataset, stratified_indices
from lgm.errors import CorruptFileError, LgmError
from lgm.feature_store import cache_root
from lgm.features import CachedReal, LiveReal, compute_feature_cache
from lgm.real_cache import (SIZE_FIELDS, CacheFeaturesConfig, RealFeatureCache, cache_key, find_real_cache,
                             select_indices)
from lgm.rundir import RunDir
from lgm.synthetic_side import view_aug_config


def real_batch_size(cfg: DistillConfig, num_classes: int) -> int:
    if cfg.real_gradient == "full":
        return 2**62  # every cached row: CachedReal takes the exact gradient over the whole cache
    return cfg.real_batch or cfg.ipc * cfg.augs * num_classes


@dataclass(frozen=True)
class RealSideChoice:
    """How a run gets its real gradients, as resolved from --real-features (recorded in real_side.json)."""

    mode: Literal["live", "run-cache", "standalone"]
    requested: str
    cache_id: str | None = None
    cache_path: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


REAL_SIDE_FILE = "real_side.json"


def cache_request(cfg: DistillConfig, ds: ImageDataset, bb: Backbone) -> dict:
    """The key a standalone cache must match for this run (its size fields aside: any views/selection do)."""
    req = CacheFeaturesConfig(dataset=ds.name, backbone=bb.name, views=cfg.cache_views, res=cfg.res, crop=cfg.crop,
                              per_class=cfg.cache_per_class, seed=cfg.seed, aug=real_aug_config(cfg).kind,
                              clamp_crop=cfg.clamp_crop, noise_std=cfg.noise_std, noise_mean=cfg.noise_mean,
                              random_init=cfg.random_init, weights=cfg.weights_for(bb.name),
                              normalization=cfg.normalization)
    return cache_key(req, ds, bb, select_indices(ds, cfg.cache_per_class, cfg.seed))


def resolve_real_side(cfg: DistillConfig, ds: ImageDataset, bb: Backbone, run: RunDir | None):
    """Pick the real side: (choice, opened standalone cache or None). A resumed run keeps its recorded choice."""
    recorded = run.path / REAL_SIDE_FILE if run is not None else None
    if recorded is not None and recorded.is_file():
        try:
            prev = RealSideChoice(**read_json_object(recorded, "a real-side record"))
        except TypeError as e:
            raise LgmError(f"{recorded} is not a real-side record lgm wrote ({e}); restore it, or delete it together "
                           "with the checkpoint to restart the run") from None
        if prev.mode != "standalone":
            return prev, None
        candidates = [p for p in (cfg.real_cache, prev.cache_path,
                                  str(cache_root(cfg.cache_dir) / "real" / str(prev.cache_id))) if p]
        for path in candidates:
            if (Path(path) / "meta.json").is_file():
                cache = RealFeatureCache.open(path, cache_request(cfg, ds, bb), ignore=SIZE_FIELDS)
                if cache.id != prev.cache_id:
                    raise LgmError(f"{run.path} was started with the real-feature cache {prev.cache_id}, but {path} "
                                   f"holds {cache.id}; resume with --real-cache pointing at the original cache")
                return prev, cache
        raise LgmError(f"{run.path} was started with the real-feature cache {prev.cache_id} ({prev.cache_path}), "
                       "which is gone; rebuild it with the same `lgm cache-features` command, or name it with "
                       "--real-cache")
    if cfg.real_features == "live":
        return RealSideChoice("live", "live"), None
    cache = None
    if cfg.real_cache is not None:
        cache = RealFeatureCache.open(cfg.real_cache, cache_request(cfg, ds, bb), ignore=SIZE_FIELDS)
    else:
        found = find_real_cache(cache_request(cfg, ds, bb), cfg.cache_dir)
        if found is not None:
            cache = RealFeatureCache.open(found)
    if cache is not None:
        return RealSideChoice("standalone", cfg.real_features, cache.id, str(cache.path.resolve())), cache
    if cfg.real_features == "cached" or cfg.real_gradient == "full":
        return RealSideChoice("run-cache", cfg.real_features), None
    return RealSideChoice("live", cfg.real_features), None


def build_real_side(cfg: DistillConfig, ds: ImageDataset, backbone: Backbone, device: torch.device, autocast,
                    run: RunDir | None, choice: RealSideChoice | None = None,
                    cache=None, cache_name: str = "real_features.safetensors") -> LiveReal | CachedReal:
    aug_cfg = real_aug_config(cfg)
    if choice is None:
        choice, cache = resolve_real_side(cfg, ds, backbone, run)
    if choice.mode == "live":
        return LiveReal(ds.train, cfg.res, cfg.crop, aug_cfg, backbone, device, autocast)
    if choice.mode == "standalone":
        return CachedReal(cache.features, cache.labels, device)
    cache_path = run.path / cache_name if run is not None else None
    if cache_path is not None and cache_path.is_file():
        try:
            tensors = load_tensors(cache_path)
            if set(tensors) != {"features", "labels"} or tensors["features"].shape[:1] != tensors["labels"].shape:
                raise CorruptFileError(f"{cache_path} does not hold matching 'features' and 'labels' tensors")
            return CachedReal(tensors["features"], tensors["labels"], device)
        except CorruptFileError as e:  # a cache: computed again (the same features, from the same seeds)
            _log(f"warning: {e}; recomputing the run's feature cache")
    split = ds.train
    if cfg.cache_per_class:
        picker = torch.Generator().manual_seed((cfg.seed << 8) | 5)
        split = split.subset(torch.sort(stratified_indices(split.labels, cfg.cache_per_class, picker)).values)
    gen = torch.Generator(device=device).manual_seed((cfg.seed << 8) | 4)
    feats, labels = compute_feature_cache(backbone, split, cfg.res, cfg.crop, aug_cfg, cfg.cache_views, gen,
                                          device, autocast, progress=cfg.progress)
    if cache_path is not None:
        atomic_save_tensors(cache_path, {"features": feats, "labels": labels},
                            metadata={"config_hash": cfg.hash(), "backbone": backbone.name, "dataset": ds.name})
    return CachedReal(feats, labels, device)


def real_aug_config(cfg: DistillConfig) -> AugmentConfig:
    """How real images are seen: like the synthetic views (--real-aug same), or whole (none)."""
    aug = view_aug_config(cfg)
    return aug if cfg.real_aug == "same" else dataclasses.replace(aug, kind="none")


def _log(msg: str) -> None:
    print(f"lgm: {msg}", file=sys.stderr, flush=True)
