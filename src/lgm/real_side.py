"""The real side of a run: which one it uses, building it, the record of the choice, and its gradients.

The loop sees one object, ``RealSide``, and asks it one thing per step: the
real head gradient on each active backbone. Around it:

- choosing (``choose_real_sides``): ``--real-features`` picks live features (a
  backbone pass per real view and step), a per-run cache
  (``real_features.safetensors`` in the run directory; ``real_features.K``
  for the K-th backbone of a joint run) or a standalone cache
  (``lgm cache-features``, ``lgm.real_cache``); a resumed run keeps the
  choices recorded in ``real_side.json`` (every backbone's, for a joint run);
- building (``open_real_side``): rank 0 first under torchrun, so that the
  other processes read the per-run cache it wrote;
- recording (``record_real_side``): ``real_side.json``, and the artifact's
  ``real_side`` entry.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch

from lgm.artifacts import atomic_save_tensors, atomic_write_json, load_tensors, read_json_object
from lgm.augment import AugmentConfig
from lgm.backbones import Backbone
from lgm.config import DistillConfig
from lgm.data import ImageDataset, stratified_indices
from lgm.distributed import SINGLE, Shard
from lgm.errors import CorruptFileError, LgmError
from lgm.feature_store import cache_root
from lgm.features import CachedReal, LiveReal, compute_feature_cache, mean_gradient
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


def cache_features_config(cfg: DistillConfig, ds: ImageDataset, bb: Backbone, **fields) -> CacheFeaturesConfig:
    """The `lgm cache-features` settings of the cache this run would build for backbone ``bb``."""
    return CacheFeaturesConfig(dataset=ds.name, backbone=bb.name, views=cfg.cache_views, res=cfg.res, crop=cfg.crop,
                               per_class=cfg.cache_per_class, seed=cfg.seed, aug=real_aug_config(cfg).kind,
                               clamp_crop=cfg.clamp_crop, noise_std=cfg.noise_std, noise_mean=cfg.noise_mean,
                               random_init=cfg.random_init, weights=cfg.weights_for(bb.name),
                               normalization=cfg.normalization, cache_dir=cfg.cache_dir, **fields)


def cache_request(cfg: DistillConfig, ds: ImageDataset, bb: Backbone) -> dict:
    """The key a standalone cache must match for this run (its size fields aside: any views/selection do)."""
    req = cache_features_config(cfg, ds, bb)
    return cache_key(req, ds, bb, select_indices(ds, cfg.cache_per_class, cfg.seed))


def wants_cache(cfg: DistillConfig) -> bool:
    """Whether the run reads its real gradient from cached features when it finds no standalone cache."""
    return cfg.real_features == "cached" or (cfg.real_features != "live" and cfg.real_gradient == "full")


def resolve_real_side(cfg: DistillConfig, ds: ImageDataset, bb: Backbone, run: RunDir | None):
    """Pick the real side: (choice, opened standalone cache or None). A resumed run keeps its recorded choice."""
    recorded = read_recorded_sides(run)
    if recorded is not None:
        return reopen_choice(recorded[0], cfg, ds, bb, run)
    return choose_fresh(cfg, ds, bb)


def read_recorded_sides(run: RunDir | None) -> list[RealSideChoice] | None:
    """The choices a run recorded in real_side.json (one per backbone), or None before its first start.

    A single-backbone run writes one choice; a joint run ``{"backbones": [choice, ...]}``.
    """
    recorded = run.path / REAL_SIDE_FILE if run is not None else None
    if recorded is None or not recorded.is_file():
        return None
    data = read_json_object(recorded, "a real-side record")
    entries = data.get("backbones") if "backbones" in data else [data]
    try:
        if not isinstance(entries, list) or not entries:
            raise TypeError("no choices")
        return [RealSideChoice(**{k: v for k, v in e.items() if k != "backbone"}) for e in entries]
    except (TypeError, AttributeError) as e:
        raise LgmError(f"{recorded} is not a real-side record lgm wrote ({e}); restore it, or delete it together "
                       "with the checkpoint to restart the run") from None


def reopen_choice(prev: RealSideChoice, cfg: DistillConfig, ds: ImageDataset, bb: Backbone, run: RunDir):
    """A recorded choice, with its standalone cache found again (and checked to be the same cache)."""
    if prev.mode != "standalone":
        return prev, None
    candidates = [p for p in (cfg.real_cache if not cfg.joint else None, prev.cache_path,
                              str(cache_root(cfg.cache_dir) / "real" / str(prev.cache_id))) if p]
    for path in candidates:
        if (Path(path) / "meta.json").is_file():
            cache = RealFeatureCache.open(path, cache_request(cfg, ds, bb), ignore=SIZE_FIELDS)
            if cache.id != prev.cache_id:
                raise LgmError(f"{run.path} was started with the real-feature cache {prev.cache_id} of {bb.name}, "
                               f"but {path} holds {cache.id}; resume with --real-cache pointing at the original "
                               "cache")
            return dataclasses.replace(prev, cache_path=str(cache.path.resolve())), cache
    raise LgmError(f"{run.path} was started with the real-feature cache {prev.cache_id} of {bb.name} "
                   f"({prev.cache_path}), which is gone; rebuild it with the same `lgm cache-features` command, "
                   "or name it with --real-cache")


def choose_fresh(cfg: DistillConfig, ds: ImageDataset, bb: Backbone):
    """The choice of a run's first start (nothing recorded yet)."""
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
    if wants_cache(cfg):
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


def run_cache_file(cfg: DistillConfig, k: int) -> str:
    """Per-run real-feature cache of the k-th backbone (a single-backbone run keeps the name it always had)."""
    return joint_cache_file(k) if cfg.joint else "real_features.safetensors"


def joint_cache_file(k: int) -> str:
    return f"real_features.{k}.safetensors"


def choose_real_sides(cfg: DistillConfig, ds: ImageDataset, backbones: Sequence[Backbone],
                      run: RunDir | None) -> list[RealSideChoice]:
    """The real side of every backbone of the run (picklable: rank 0 chooses, torchrun sends it to the others)."""
    if not cfg.joint:
        return [resolve_real_side(cfg, ds, backbones[0], run)[0]]
    # A joint run: each backbone's standalone cache where one matches (issue 7); with --real-features live, or
    # auto and no cache at all, the paper's live side for all; otherwise a per-run cache for every backbone
    # without a standalone one (every backbone must see the same real views, row for row).
    recorded = read_recorded_sides(run)
    if recorded is not None:  # a resumed joint run keeps every backbone's recorded source
        if len(recorded) != len(backbones):
            raise LgmError(f"{run.path / REAL_SIDE_FILE} records {len(recorded)} real sides for a run of "
                           f"{len(backbones)} backbones; restore it, or delete it with the checkpoint to restart")
        return [reopen_choice(c, cfg, ds, bb, run)[0] for c, bb in zip(recorded, backbones)]
    if cfg.real_features == "live":
        return [RealSideChoice("live", "live")] * len(backbones)
    choices = [choose_fresh(cfg, ds, bb)[0] for bb in backbones]
    if all(c.mode == "live" for c in choices):
        return choices
    return [RealSideChoice("run-cache", cfg.real_features) if c.mode == "live" else c for c in choices]


def check_real_batch(cfg: DistillConfig, ds: ImageDataset, choices: Sequence[RealSideChoice]) -> None:
    """A live real batch is drawn without replacement: it cannot exceed the training set."""
    n_real = real_batch_size(cfg, ds.num_classes)
    if any(c.mode == "live" for c in choices) and n_real > len(ds.train):
        how = "--real-batch" if cfg.real_batch else f"ipc*augs*classes = {cfg.ipc}*{cfg.augs}*{ds.num_classes}"
        raise LgmError(
            f"the real batch ({how} = {n_real}) is larger than the training set of {ds.name} "
            f"({len(ds.train)} images); lower --augs, --ipc or --real-batch"
        )


class RealSide:
    """The real side as the loop sees it: one real batch per step, its head gradient on every active backbone.

    Live: the images are sampled and augmented once (as ``LiveReal`` does) and
    every active backbone takes its features of those same views. Cached: each
    backbone has its own cache of the same augmented views (same images, same
    crops, row for row), and the same rows are indexed in all of them. Under
    torchrun each process takes its share of the batch and the head-gradient
    sums are all-reduced (``lgm.features.mean_gradient``). ``choices`` is what
    the run records.
    """

    def __init__(self, backbones: Sequence[Backbone], live: LiveReal | None = None,
                 cached: Sequence[CachedReal] | None = None,
                 choices: Sequence[RealSideChoice] | None = None) -> None:
        if (live is None) == (cached is None):
            raise ValueError("give either a live real side or one cache per backbone")
        if cached is not None:
            if len(cached) != len(backbones) or len({len(c) for c in cached}) != 1:
                raise LgmError("the per-backbone real-feature caches of this run differ in length; delete the "
                               "real_features.*.safetensors files of the run directory to rebuild them")
        self.backbones, self.live, self.cached = list(backbones), live, None if cached is None else list(cached)
        mode = "live" if live is not None else "run-cache"
        self.choices = list(choices) if choices is not None else [RealSideChoice(mode, mode)] * len(self.backbones)

    def __len__(self) -> int:
        return len(self.live) if self.live is not None else len(self.cached[0])

    @property
    def record(self) -> RealSideChoice:
        """The first backbone's choice (a single-backbone run's whole record)."""
        return self.choices[0]

    def to_dict(self) -> dict:
        """Every backbone's choice, by name (a joint run's real_side.json and its artifact's ``real_sides``)."""
        return {"backbones": [{"backbone": bb.name, **c.to_dict()} for bb, c in zip(self.backbones, self.choices)]}

    def gradients(self, heads: dict[int, tuple[torch.Tensor, torch.Tensor]], n: int, sample_gen: torch.Generator,
                  aug_gen: torch.Generator | None = None, shard: Shard = SINGLE) -> dict[int, torch.Tensor]:
        """Head gradient of the step's real batch for each backbone k in ``heads`` (the batch is drawn once)."""
        if self.live is not None:
            live = self.live
            x, y = live.sample_views(n, sample_gen, shard)
            with torch.no_grad(), live.autocast:
                feats = {k: self.backbones[k].features(x) for k in heads}
            size = min(n, len(live))
            return {k: mean_gradient(feats[k], y, w, b, size, shard) for k, (w, b) in heads.items()}
        # One draw of rows; every backbone's cache holds the same views, row for row.
        rows, count = self.cached[0].draw_rows(n, sample_gen, shard)
        return {k: self.cached[k].gradient_at(rows, count, w, b, shard) for k, (w, b) in heads.items()}


def build_real_sides(cfg: DistillConfig, ds: ImageDataset, backbones: Sequence[Backbone],
                     choices: Sequence[RealSideChoice], device: torch.device, autocast,
                     run: RunDir | None) -> RealSide:
    """The ``RealSide`` of the chosen sources (standalone caches are opened again here, by their path)."""
    if all(c.mode == "live" for c in choices):
        live = LiveReal(ds.train, cfg.res, cfg.crop, real_aug_config(cfg), backbones[0], device, autocast)
        return RealSide(backbones, live=live, choices=choices)
    if any(c.mode == "live" for c in choices):
        raise ValueError("a real side is live for every backbone or for none")
    cached = []
    for k, (bb, choice) in enumerate(zip(backbones, choices)):
        cache = RealFeatureCache.open(choice.cache_path) if choice.mode == "standalone" else None
        cached.append(build_real_side(cfg, ds, bb, device, autocast, run, choice, cache,
                                      cache_name=run_cache_file(cfg, k)))
    return RealSide(backbones, cached=cached, choices=choices)


def open_real_side(cfg: DistillConfig, ds: ImageDataset, backbones: Sequence[Backbone],
                   choices: Sequence[RealSideChoice], device: torch.device, autocast, run: RunDir | None,
                   shard: Shard = SINGLE) -> RealSide:
    """Build the real side (rank 0 first: the others find the per-run caches it wrote) and record the choice."""
    side = shard.build_main_first(lambda: build_real_sides(cfg, ds, backbones, choices, device, autocast, run))
    if shard.is_main:
        record_real_side(cfg, side, run)
    return side


def record_real_side(cfg: DistillConfig, side: RealSide, run: RunDir | None) -> None:
    """real_side.json (read back when the run resumes), and a line for every standalone cache used."""
    if run is not None:
        atomic_write_json(run.path / REAL_SIDE_FILE, side.to_dict() if cfg.joint else side.record.to_dict())
    for k, choice in enumerate(side.choices):
        if choice.mode == "standalone":
            _log(f"real side: features from the cache {choice.cache_path} ({len(side.cached[k])} rows)")


def real_aug_config(cfg: DistillConfig) -> AugmentConfig:
    """How real images are seen: like the synthetic views (--real-aug same), or whole (none)."""
    aug = view_aug_config(cfg)
    return aug if cfg.real_aug == "same" else dataclasses.replace(aug, kind="none")


def _log(msg: str) -> None:
    print(f"lgm: {msg}", file=sys.stderr, flush=True)
