"""The offline main job: distill Fashion-MNIST for EfficientNet-Lite0 and compare against real data.

Everything here is installable from package registries (see the README), so
it runs on a fresh machine without network access.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch

from lgm.artifacts import DistilledSet, atomic_write_json, atomic_write_text
from lgm.backbones import Backbone, load_backbone
from lgm.config import DistillConfig
from lgm.data import ImageDataset, load_dataset, stratified_indices
from lgm.devices import resolve_device
from lgm.distillation import distill
from lgm.evaluate import FULL_PROBE, EvalContext, stored_split_features, summary
from lgm.feature_store import FeatureStore
from lgm.probe import ProbeConfig, center_features, topk, train_probes
from lgm.selection import centroid_indices, neighbor_indices, random_indices
from lgm.command_configs import DEMO_DISTILL, DemoConfig  # noqa: F401  (re-exported)


@dataclasses.dataclass
class RealFeatures:
    """The real features a demo's evaluation needs, computed once (before the distillation, which can reuse them)."""

    ctx: EvalContext
    index: torch.Tensor
    """Training images of the full-set probe (and the pool the centroids and neighbors are chosen from)."""
    train_features: torch.Tensor

    @classmethod
    def build(cls, ds: ImageDataset, backbone: Backbone, cfg: DemoConfig, device: torch.device, laps: "Laps",
              log=print) -> "RealFeatures":
        # Test, validation, training and view features go to the feature store ($LGM_CACHE_DIR or
        # ~/.cache/lgm): re-running the demo on a finished run re-evaluates in a fraction of the time.
        store = FeatureStore()
        ctx = EvalContext.build(ds, backbone, cfg.res, cfg.crop, device, ProbeConfig(views=cfg.probe_views),
                                val_per_class=cfg.val_per_class, store=store)
        log(f"test and validation features in {laps.lap('test_and_validation_features'):.0f} s")
        index = ctx.train_index
        if cfg.full_train and cfg.full_train < len(index):
            keep = stratified_indices(ds.train.labels[index], cfg.full_train // ds.num_classes,
                                      torch.Generator().manual_seed(0))
            index = index[torch.sort(keep).values]
        feats = stored_split_features(ds, "train", index, backbone, cfg.res, cfg.crop, device, store)
        log(f"features of {len(index)} training images in {laps.lap('train_features'):.0f} s")
        return cls(ctx, index, feats)

    def every_training_image(self, num_train: int) -> torch.Tensor | None:
        """Center-view features of the whole training split (full-set rows and validation rows), if at hand."""
        whole = torch.empty(num_train, self.train_features.shape[1])
        have = torch.zeros(num_train, dtype=torch.bool)
        whole[self.index], have[self.index] = self.train_features, True
        if self.ctx.val_index is not None:
            whole[self.ctx.val_index], have[self.ctx.val_index] = self.ctx.val_features, True
        return whole if bool(have.all()) else None


def share_real_cache(dcfg: DistillConfig, ds: ImageDataset, backbone: Backbone, real: RealFeatures,
                     device: torch.device, log=print):
    """Build the distillation's unaugmented real-feature cache from the evaluation's training features.

    With ``--real-aug none`` and ``res == crop`` a cached real row is the center-view feature the full-set
    probe also needs: the distillation finds this standalone cache (``lgm.real_side``) instead of passing
    its training images through the backbone a second time.
    """
    from lgm.real_cache import build_real_cache
    from lgm.real_side import cache_features_config, wants_cache

    if dcfg.joint or not wants_cache(dcfg) or dcfg.real_cache or dcfg.real_aug != "none" or dcfg.res != dcfg.crop:
        return None
    whole = real.every_training_image(len(ds.train))
    if whole is None:  # --full-train: the evaluation has only part of the training set
        return None
    cache = build_real_cache(cache_features_config(dcfg, ds, backbone, progress=False), ds, backbone, device,
                             contextlib.nullcontext(), center_rows=lambda idx: whole[idx])
    log(f"real-feature cache of the distillation taken from the training features: {cache.path}")
    return cache


def compare_with_real(distilled: DistilledSet, ds: ImageDataset, backbone: Backbone, cfg: DemoConfig,
                      device: torch.device, log=print, real: RealFeatures | None = None,
                      laps: "Laps | None" = None) -> dict:
    """Distilled vs centroids vs random real (several seeds) vs the full training set, one probe protocol."""
    res, crop = cfg.res, cfg.crop
    laps = laps or Laps()
    real = real or RealFeatures.build(ds, backbone, cfg, device, laps, log)
    ctx, index, train_feats = real.ctx, real.index, real.train_features
    seeds = list(range(cfg.repeats))
    ipc = distilled.images.shape[0] // ds.num_classes
    distilled_scores = ctx.score_images(distilled.images, distilled.labels, seeds)
    log(f"distilled: {[round(a * 100, 1) for a in distilled_scores['top1']['values']]}")
    random_top1, random_nn1 = [], []
    for seed in seeds:
        idx = random_indices(ds.train.labels, ipc, 1000 + seed, pool=ctx.train_index)
        scores = ctx.score_images(ds.train.load(idx, res), ds.train.labels[idx], [seed])
        random_top1.append(scores["top1"]["mean"])
        random_nn1.append(scores["nn1"])
    log(f"random real: {[round(a * 100, 1) for a in random_top1]}")
    laps.lap("distilled_and_random_probes")

    train = ds.train.subset(index)
    centroid_idx = centroid_indices(train_feats, train.labels, ds.num_classes)
    centroid_scores = ctx.score_images(train.load(centroid_idx, res), train.labels[centroid_idx], seeds)
    log(f"centroids: {[round(a * 100, 1) for a in centroid_scores['top1']['values']]}")
    neighbor_idx = neighbor_indices(center_features(backbone, distilled.images, crop, device), distilled.labels,
                                    train_feats, train.labels)
    neighbor_scores = ctx.score_images(train.load(neighbor_idx, res), train.labels[neighbor_idx], seeds)
    log(f"neighbors: {[round(a * 100, 1) for a in neighbor_scores['top1']['values']]}")
    laps.lap("centroid_and_neighbor_probes")
    full = train_probes(train_feats, train.labels, ds.num_classes, FULL_PROBE, [0],
                        val=(ctx.val_features, ctx.val_labels), device=device)
    full_acc = float(topk(full, ctx.test_features, ctx.test_labels, 1)[0])
    log(f"full training set ({len(train)} images): {full_acc * 100:.1f} "
        f"(probe trained in {laps.lap('full_probe'):.0f} s)")
    return {
        "distilled": distilled_scores["top1"] | {"nn1": distilled_scores["nn1"], "top5": distilled_scores["top5"]},
        "centroids": centroid_scores["top1"] | {"nn1": centroid_scores["nn1"]},
        "neighbors": neighbor_scores["top1"] | {"nn1": neighbor_scores["nn1"]},
        "random": summary(random_top1) | {"nn1": summary(random_nn1)},
        "full": {"mean": full_acc, "std": 0.0, "values": [full_acc], "train_images": len(train)},
        "test_images": len(ds.test),
        "protocol": {"small_sets": ctx.protocol(),
                     "full": dataclasses.asdict(FULL_PROBE) | {"views": "1 center crop"},
                     "test_split": "scored only; never used for selection"},
        "seconds": laps.seconds,
    }


class Laps:
    """Wall-clock seconds of consecutive stages (where a demo's time goes: results.json "seconds")."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        self.seconds[stage] = round(now - self._last, 2)
        self._last = now
        return self.seconds[stage]


def format_table(results: dict) -> str:
    rows = ["| set | images | top-1 (%) | of full | 1-NN (%) |", "|---|---|---|---|---|"]
    n = results.get("num_classes", "")
    full = results["full"]["mean"]
    for key, label, images in (("distilled", "distilled (LGM)", f"{n}"), ("centroids", "centroids (real)", f"{n}"),
                               ("neighbors", "neighbors (real)", f"{n}"), ("random", "random real", f"{n}"),
                               ("full", "full training set", str(results["full"]["train_images"]))):
        if key not in results:
            continue
        r = results[key]
        spread = f" ± {r['std'] * 100:.1f}" if len(r["values"]) > 1 else ""
        nn1 = r.get("nn1")
        nn1 = "" if nn1 is None else f"{(nn1['mean'] if isinstance(nn1, dict) else nn1) * 100:.1f}"
        rows.append(f"| {label} | {images} | {r['mean'] * 100:.1f}{spread} | {r['mean'] / full:.0%} | {nn1} |")
    return "\n".join(rows)


def demo_distill_config(cfg: DemoConfig) -> DistillConfig:
    """The distillation the demo runs: DEMO_DISTILL, with every field the demo's own flags also name."""
    shared = {f.name for f in dataclasses.fields(DemoConfig)} & {f.name for f in dataclasses.fields(DistillConfig)}
    return DistillConfig(**{**DEMO_DISTILL, **{k: getattr(cfg, k) for k in shared}})


def run_demo(cfg: DemoConfig = DemoConfig()) -> dict:
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    dcfg = demo_distill_config(cfg)

    def log(msg: str) -> None:
        print(f"lgm demo: {msg}", file=sys.stderr, flush=True)

    ds = load_dataset(dcfg.dataset, dcfg.data_root)
    backbone = load_backbone(dcfg.backbone, device)
    t0 = time.perf_counter()
    laps = Laps()
    # The real features first: the distillation's real-feature cache is a part of them.
    real = RealFeatures.build(ds, backbone, cfg, device, laps, log)
    share_real_cache(dcfg, ds, backbone, real, device, log)
    laps.lap("real_cache")
    distilled = distill(ds, backbone, dcfg, out=out / "distill")
    log(f"distillation finished ({laps.lap('distillation_call'):.0f} s in this call); evaluating")
    results = compare_with_real(distilled, ds, backbone, cfg, device, log=log, real=real, laps=laps)
    results["seconds"]["total"] = round(time.perf_counter() - t0, 2)
    results.update({"num_classes": ds.num_classes, "dataset": ds.name, "backbone": backbone.name,
                    "distill_config": dcfg.to_dict(), "demo_config": dataclasses.asdict(cfg),
                    "distill_seconds": distilled.meta.get("seconds")})
    table = format_table(results)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", table + "\n")
    print(table)
    return results
