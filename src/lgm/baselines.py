"""The paper's real-image baselines (SPEC §7), chosen from the training split minus validation.

Each selection is an ordinary artifact (the ``DistilledSet`` format, images
in [0, 1] at the run's resolution) that records how it was chosen, so
``lgm eval`` scores it exactly like a distilled set. The full-dataset
reference is a small JSON artifact: its "images" are the whole training pool.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from lgm import selection
from lgm.artifacts import DistilledSet, atomic_write_json
from lgm.backbone_spec import recorded_specs, weights_record
from lgm.data import ImageDataset, check_split
from lgm.deprecation import moved_names
from lgm.errors import LgmError, UsageError
from lgm.evaluate import stored_split_features, validation_split
from lgm.feature_store import FeatureStore
from lgm.version import __version__
from lgm.command_configs import BaselineConfig  # noqa: F401  (re-exported)

# Pure selection functions moved to lgm.selection (below every layer: distillation's --init real uses one).
__getattr__ = moved_names(__name__, {name: selection for name in ("random_indices", "centroid_indices",
                                                                  "neighbor_indices")})


def _log(msg: str) -> None:
    print(f"lgm baselines: {msg}", file=sys.stderr, flush=True)


def selection_artifact(ds: ImageDataset, idx: torch.Tensor, res: int, how: dict,
                       normalization: str = "native") -> DistilledSet:
    return DistilledSet(ds.train.load(idx, res), ds.train.labels[idx].clone(), list(ds.class_names),
                        {"kind": "baseline", "dataset": ds.name, "indices": idx.tolist(),
                         "config": {"res": res, "crop": how.get("crop", res), "normalization": normalization},
                         "lgm_version": __version__}
                        | ({"split": ds.meta["split"]} if isinstance(ds.meta.get("split"), dict) else {}) | how)


def make_baselines(cfg: BaselineConfig) -> dict[str, Path]:
    """Write random (per seed), centroids, neighbors (with --distilled) and the full reference; return paths."""
    from lgm.data import load_dataset
    from lgm.devices import resolve_device

    if cfg.ipc <= 0 or cfg.random_seeds < 0:
        raise UsageError("--ipc must be positive and --random-seeds >= 0")
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.data_root, cfg.on_bad_image)
    distilled = DistilledSet.load(cfg.distilled) if cfg.distilled else None
    if distilled is not None:
        check_split(distilled.meta.get("split"), ds, str(cfg.distilled))
    # The distilled set's own backbone comes with the weights it recorded; every check before any file is written.
    spec = cfg.spec_for(cfg.backbone, recorded_specs(distilled.meta) if distilled else None, [cfg.backbone],
                        cfg.backbone, str(cfg.distilled or "the baselines"))
    backbone = spec.load(device)
    stored = distilled.meta.get("config", {}) if distilled else {}
    res = cfg.res or int(stored.get("res", 256))
    crop = cfg.crop or int(stored.get("crop", 224))
    out = Path(cfg.out)
    pool = (torch.arange(len(ds.train)) if getattr(ds, "val", None) is not None
            else validation_split(ds.train.labels, cfg.val_per_class)[0])
    paths: dict[str, Path] = {}
    # What later commands need to rebuild the same backbone (lgm.backbone_spec.recorded_specs reads it).
    made_with = {"backbone": cfg.backbone, "random_init": spec.random_init}
    if spec.weights:
        made_with["weights_file"] = weights_record(spec.weights)
    common = made_with | {"ipc": cfg.ipc, "crop": crop,
                          "pool": f"training split minus {cfg.val_per_class} validation images per class"}
    for seed in range(cfg.random_seeds):
        idx = selection.random_indices(ds.train.labels, cfg.ipc, seed, pool)
        art = selection_artifact(ds, idx, res, common | {"selection": "random", "seed": seed}, spec.normalization)
        paths[f"random_s{seed}"] = art.save(out / f"random_s{seed}" / "distilled")
    store = FeatureStore(cfg.cache_dir, enabled=cfg.cache)
    _log(f"features of {pool.numel()} training images on {cfg.backbone}")
    feats = stored_split_features(ds, "train", pool, backbone, res, crop, device, store)
    idx = pool[selection.centroid_indices(feats, ds.train.labels[pool], ds.num_classes, cfg.ipc)]
    art = selection_artifact(ds, idx, res, common | {"selection": "centroids (nearest to class mean, L2)"},
                             spec.normalization)
    paths["centroids"] = art.save(out / "centroids" / "distilled")
    if distilled is not None:
        if distilled.class_names != list(ds.class_names):
            raise LgmError(f"{cfg.distilled} was distilled from other classes than {ds.name}'s")
        from lgm.probe import center_features

        q = center_features(backbone, distilled.images, crop, device)
        idx = pool[selection.neighbor_indices(q, distilled.labels, feats, ds.train.labels[pool])]
        art = selection_artifact(ds, idx, res, common | {"selection": "neighbors (most cosine-similar real image "
                                                                       "of the class, per distilled image)",
                                                          "distilled": str(cfg.distilled)}, spec.normalization)
        paths["neighbors"] = art.save(out / "neighbors" / "distilled")
    full = out / "full" / "full.json"
    atomic_write_json(full, {"kind": "full-dataset", "dataset": ds.name, "images": int(pool.numel()),
                             "val_per_class": cfg.val_per_class,
                             "config": {"res": res, "crop": crop, "normalization": spec.normalization},
                             "lgm_version": __version__} | made_with)
    paths["full"] = full
    for name, p in paths.items():
        _log(f"{name}: {p}")
    return paths
