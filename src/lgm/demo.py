"""The offline main job: distill Fashion-MNIST for EfficientNet-Lite0 and compare against real data.

Everything here is installable from package registries (see the README), so
it runs on a fresh machine without network access.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lgm.artifacts import DistilledSet, atomic_write_json, atomic_write_text
from lgm.augment import AugmentConfig
from lgm.backbones import Backbone, load_backbone
from lgm.config import DistillConfig
from lgm.data import ImageDataset, load_dataset, stratified_indices
from lgm.distillation import distill, resolve_device
from lgm.probe import ProbeConfig, split_features, top1, train_probe, view_features

DEMO_DISTILL = dict(dataset="fashion-mnist", backbone="effnet_lite0", ipc=1, steps=1500, augs=4,
                    lr=1e-2, res=64, crop=56, real_features="cached", real_batch=4000, cache_per_class=1000,
                    cache_views=2)


@dataclass(frozen=True)
class DemoConfig:
    """The offline default: EfficientNet-Lite0 on Fashion-MNIST, 1 image per class, ~10 min of CPU distillation."""

    out: str = "runs/demo"
    """Directory of the demo (the distillation run lives in OUT/distill)."""
    steps: int = DEMO_DISTILL["steps"]
    """Distillation steps."""
    augs: int = DEMO_DISTILL["augs"]
    """Augmented views of the synthetic set per step."""
    lr: float = DEMO_DISTILL["lr"]
    """Adam learning rate of the distillation."""
    res: int = DEMO_DISTILL["res"]
    """Synthetic resolution (Fashion-MNIST's 28 px images are upsampled to it)."""
    crop: int = DEMO_DISTILL["crop"]
    """Crop fed to the backbone (training views and test center crop)."""
    real_batch: int = DEMO_DISTILL["real_batch"]
    """Cached real views per step (a large batch: see the README on real-gradient noise)."""
    cache_per_class: int = DEMO_DISTILL["cache_per_class"]
    """Training images per class in the real-feature cache."""
    cache_views: int = DEMO_DISTILL["cache_views"]
    """Augmented views per cached training image."""
    seed: int = 0
    """Seed of the distillation."""
    repeats: int = 5
    """Probe repeats for the distilled set (probe seeds) and for random real selections (selection seeds)."""
    probe_views: int = 100
    """Augmented views per image when probing a 1-image-per-class set."""
    full_train: int = 0
    """Training images for the full-dataset reference probe (0 = all)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    data_root: str | None = None
    """Directory holding fashion-mnist/ (default: $LGM_DATA_ROOT, then the Debian package's location)."""
    progress: bool = True
    """Show progress bars."""


def evaluate_set(images: torch.Tensor, labels: torch.Tensor, backbone: Backbone, test_feats: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, crop: int, views: int, seed: int,
                 device: torch.device, probe: ProbeConfig = ProbeConfig()) -> float:
    """Top-1 on the test features of a probe trained on ``views`` augmented views of ``images``."""
    g = torch.Generator(device=device).manual_seed(seed)
    feats = view_features(backbone, images, views, crop, AugmentConfig(), g, device)
    y = labels.repeat(views)
    w, b = train_probe(feats, y, num_classes, probe, torch.Generator().manual_seed(seed))
    return top1(w, b, test_feats, test_labels)


def random_real_indices(labels: torch.Tensor, ipc: int, seed: int) -> torch.Tensor:
    """``ipc`` random training images per class, class-major like a distilled set."""
    idx = stratified_indices(labels, ipc, torch.Generator().manual_seed(seed))
    return idx[torch.argsort(labels[idx], stable=True)]


def _summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "values": values}


def compare_with_real(distilled: DistilledSet, ds: ImageDataset, backbone: Backbone, cfg: DemoConfig,
                      device: torch.device, log=print) -> dict:
    """Distilled vs random real (1/class, several seeds) vs full training set, one probe protocol."""
    res, crop = cfg.res, cfg.crop
    t0 = time.perf_counter()
    test_feats = split_features(backbone, ds.test, res, crop, device)
    log(f"test features: {len(ds.test)} images in {time.perf_counter() - t0:.0f} s")
    n_cls = ds.num_classes
    distilled_acc = [evaluate_set(distilled.images, distilled.labels, backbone, test_feats, ds.test.labels, n_cls,
                                  crop, cfg.probe_views, seed, device) for seed in range(cfg.repeats)]
    log(f"distilled: {[round(a * 100, 1) for a in distilled_acc]}")
    random_acc = []
    ipc = distilled.images.shape[0] // n_cls
    for seed in range(cfg.repeats):
        idx = random_real_indices(ds.train.labels, ipc, 1000 + seed)
        random_acc.append(evaluate_set(ds.train.load(idx, res), ds.train.labels[idx], backbone, test_feats,
                                       ds.test.labels, n_cls, crop, cfg.probe_views, seed, device))
    log(f"random real: {[round(a * 100, 1) for a in random_acc]}")
    train = ds.train
    if cfg.full_train and cfg.full_train < len(train):
        per_class = cfg.full_train // n_cls
        train = train.subset(stratified_indices(train.labels, per_class, torch.Generator().manual_seed(0)))
    t0 = time.perf_counter()
    train_feats = split_features(backbone, train, res, crop, device)
    full_probe = ProbeConfig(epochs=30, batch=256)
    w, b = train_probe(train_feats, train.labels, n_cls, full_probe, torch.Generator().manual_seed(0))
    full_acc = top1(w, b, test_feats, ds.test.labels)
    log(f"full training set ({len(train)} images): {full_acc * 100:.1f} ({time.perf_counter() - t0:.0f} s)")
    return {
        "distilled": _summary(distilled_acc),
        "random": _summary(random_acc),
        "full": {"mean": full_acc, "std": 0.0, "values": [full_acc], "train_images": len(train)},
        "test_images": len(ds.test),
        "protocol": {
            "small_sets": dataclasses.asdict(ProbeConfig(views=cfg.probe_views)),
            "full": dataclasses.asdict(full_probe) | {"views": "1 center crop"},
            "test": f"resize to {res}, center crop {crop}",
            "selection": "none (fixed epochs); test split only scored",
        },
    }


def format_table(results: dict) -> str:
    rows = ["| set | images | top-1 (%) |", "|---|---|---|"]
    n = results.get("num_classes", "")
    for key, label, images in (("distilled", "distilled (LGM)", f"{n}"), ("random", "random real, 1/class", f"{n}"),
                               ("full", "full training set", str(results["full"]["train_images"]))):
        r = results[key]
        spread = f" ± {r['std'] * 100:.1f}" if len(r["values"]) > 1 else ""
        rows.append(f"| {label} | {images} | {r['mean'] * 100:.1f}{spread} |")
    return "\n".join(rows)


def run_demo(cfg: DemoConfig = DemoConfig()) -> dict:
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    shared = {f.name for f in dataclasses.fields(DemoConfig)} & {f.name for f in dataclasses.fields(DistillConfig)}
    dcfg = DistillConfig(**{**DEMO_DISTILL, **{k: getattr(cfg, k) for k in shared}})

    def log(msg: str) -> None:
        print(f"lgm demo: {msg}", file=sys.stderr, flush=True)

    ds = load_dataset(dcfg.dataset, dcfg.data_root)
    backbone = load_backbone(dcfg.backbone, device)
    t0 = time.perf_counter()
    distilled = distill(ds, backbone, dcfg, out=out / "distill")
    log(f"distillation finished ({time.perf_counter() - t0:.0f} s in this call); evaluating")
    results = compare_with_real(distilled, ds, backbone, cfg, device, log=log)
    results.update({"num_classes": ds.num_classes, "dataset": ds.name, "backbone": backbone.name,
                    "distill_config": dcfg.to_dict(), "demo_config": dataclasses.asdict(cfg),
                    "distill_seconds": distilled.meta.get("seconds")})
    table = format_table(results)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", table + "\n")
    print(table)
    return results
