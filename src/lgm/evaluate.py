"""Scoring image sets with linear probes on a frozen backbone, under one protocol.

An ``EvalContext`` holds what every evaluation of one (backbone, dataset,
transform) shares: test features, the validation split's features (carved from
the training set, used for early stopping only) and the probe protocol. Any
image set (distilled, a baseline selection) is then scored the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from lgm.artifacts import DistilledSet
from lgm.backbone_spec import recorded_specs
from lgm.backbones import Backbone
from lgm.data import ImageDataset, check_split, split_fingerprint, stratified_indices
from lgm.errors import LgmError, UsageError
from lgm.feature_store import FeatureStore, backbone_identity, index_digest
from lgm.probe import (ProbeConfig, center_features, group_top1, nearest_neighbor_top1, split_rows_features, topk,
                       train_probes, view_features)
from lgm.command_configs import EvalConfig  # noqa: F401  (re-exported)

# The authors' full-dataset probe (SPEC §7): batch 128, lr 5e-4, 100 epochs, on one center view per image.
FULL_PROBE = ProbeConfig(epochs=100, batch=128, lr=5e-4, views=1, patience=10)


def full_probe(protocol: str) -> ProbeConfig:
    """The full-dataset probe of a protocol. ``authors``: their full_dataset.py loop (batch 128, so
    lr 0.001 * 128 / 256 = 5e-4; 100 epochs; N(0, 0.01^2) head; last epoch), on fixed center-view features
    (they augment every epoch, a backbone pass over the whole training set per epoch)."""
    return FULL_PROBE if protocol == "spec" else ProbeConfig.named(protocol, epochs=100, batch=128, views=1)


def validation_split(labels: torch.Tensor, per_class: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic stratified (train, val) index split of a training set: ``per_class`` val images per class."""
    val = torch.sort(stratified_indices(labels, per_class, torch.Generator().manual_seed(seed))).values
    keep = torch.ones(labels.shape[0], dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def stored_split_features(ds: ImageDataset, split_name: str, index: torch.Tensor | None, backbone: Backbone,
                          res: int, crop: int, device: torch.device, store: FeatureStore) -> torch.Tensor:
    """Center-view features of ``ds.<split_name>`` (rows ``index``, or all), through the feature store."""
    whole = getattr(ds, split_name)
    split = whole if index is None else whole.subset(index)
    # "content": the same name can hold other images (a folder edited, a dataset rebuilt): never serve its
    # old features.
    key = backbone_identity(backbone) | {
        "dataset": ds.name, "split": split_name, "rows": index_digest(index), "images": len(split),
        "labels": index_digest(split.labels), "content": split_fingerprint(whole),
        "transform": "resize+center-crop", "res": res, "crop": crop}
    with backbone.bulk_inference(len(split)):
        return store.get_rows(key, len(split), lambda start, stop: split_rows_features(backbone, split, res, crop,
                                                                                     device, start, stop),
                              desc=f"{backbone.name} {split_name} features")


def summary(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            "values": values}


@dataclass
class EvalContext:
    backbone: Backbone
    num_classes: int
    res: int
    crop: int
    test_features: torch.Tensor
    test_labels: torch.Tensor
    val_features: torch.Tensor
    val_labels: torch.Tensor
    train_index: torch.Tensor
    """Training images that are not in the validation split (the pool baselines choose from)."""
    device: torch.device
    probe: ProbeConfig = ProbeConfig()
    test_groups: torch.Tensor | None = None
    """Group of every test image (Waterbirds, Spawrious): adds per-group and worst-group top-1."""
    group_names: list[str] | None = None
    val_index: torch.Tensor | None = None
    """Training images of the validation split, in ``val_features`` order (None: an official validation split)."""
    store: FeatureStore | None = None
    """Where the augmented-view pools of scored image sets are kept (an interrupted evaluation resumes)."""

    @classmethod
    def build(cls, ds: ImageDataset, backbone: Backbone, res: int, crop: int, device: torch.device,
              probe: ProbeConfig = ProbeConfig(), val_per_class: int = 100, val_seed: int = 0,
              store: FeatureStore | None = None) -> "EvalContext":
        """Test and validation features (from ``store`` when they were computed before)."""
        store = store or FeatureStore(enabled=False)
        test = stored_split_features(ds, "test", None, backbone, res, crop, device, store)
        val_index = None
        if getattr(ds, "val", None) is not None:  # an official validation split (e.g. Flowers-102)
            train_index = torch.arange(len(ds.train))
            val, val_labels = stored_split_features(ds, "val", None, backbone, res, crop, device, store), ds.val.labels
        else:
            train_index, val_index = validation_split(ds.train.labels, val_per_class, val_seed)
            val = stored_split_features(ds, "train", val_index, backbone, res, crop, device, store)
            val_labels = ds.train.labels[val_index]
        return cls(backbone=backbone, num_classes=ds.num_classes, res=res, crop=crop,
                   test_features=test, test_labels=ds.test.labels.cpu(), val_features=val,
                   val_labels=val_labels.cpu(), train_index=train_index, device=device, probe=probe,
                   test_groups=None if ds.test.groups is None else ds.test.groups.cpu(),
                   group_names=ds.meta.get("group_names"), store=store, val_index=val_index)

    def protocol(self, n: int | None = None) -> dict:
        """The probe protocol spelled out (with ``n``, the learning rate resolved for ``n`` training images)."""
        depends_on_n = self.probe.protocol == "authors" and not self.probe.lr
        lr = {"lr_rule": self.probe.lr_rule}
        if n or not depends_on_n:
            lr["lr_resolved"] = self.probe.learning_rate(n or self.probe.batch)
        return dataclasses.asdict(self.probe) | lr | {
            "test_transform": f"resize to {self.res}, center crop {self.crop}",
            "selection": (f"early stopping on {len(self.val_labels)} validation images (never the test split)"
                          if self.probe.patience else "last epoch"),
        }

    def score_images(self, images: torch.Tensor, labels: torch.Tensor, seeds: list[int]) -> dict:
        """Probe top-1/top-5 for each seed (augmented views drawn per seed) and 1-NN on center views."""
        pools = [self.view_pool(images, seed) for seed in seeds]
        # All repeats train together as one batched model (each with its own views and batch order).
        res = train_probes(torch.stack(pools), labels, self.num_classes, self.probe, seeds,
                           val=(self.val_features, self.val_labels), device=self.device)
        top1 = topk(res, self.test_features, self.test_labels, 1).tolist()
        top5 = topk(res, self.test_features, self.test_labels, 5).tolist()
        epochs = res.epoch.tolist()
        per_group = []
        if self.test_groups is not None:
            acc = group_top1(res, self.test_features, self.test_labels, self.test_groups)
            per_group = [{g: float(a[r]) for g, a in acc.items()} for r in range(len(seeds))]
        center = center_features(self.backbone, images, self.crop, self.device)
        nn1 = nearest_neighbor_top1(center, labels, self.test_features, self.test_labels)
        out = {"top1": summary(top1), "top5": summary(top5), "nn1": nn1, "epochs": epochs}
        if per_group:
            out |= self.group_summary(per_group)
        return out

    def view_pool(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The probe's views x N x f pool of augmented-view features for one seed, via the feature store."""
        def compute() -> torch.Tensor:
            g = torch.Generator(device=self.device).manual_seed(seed)
            return view_features(self.backbone, images, self.probe.views, self.crop, self.probe.augmentation, g,
                                 self.device)

        if self.store is None:
            return compute()
        data = images.detach().float().contiguous().cpu()
        key = backbone_identity(self.backbone) | {
            "kind": "probe-views", "images": hashlib.sha256(data.numpy().tobytes()).hexdigest()[:24],
            "shape": list(data.shape), "views": self.probe.views, "crop": self.crop, "seed": seed,
            "augmentation": dataclasses.asdict(self.probe.augmentation),
            # augmentation draws come from a generator on this device: CPU and CUDA draws differ
            "device": self.device.type}
        return self.store.get(key, compute)

    def group_summary(self, per_group: list[dict[int, float]]) -> dict:
        """Per-group top-1 (mean over repeats) and the worst group's, as reported for spurious-correlation sets."""
        names = self.group_names or []
        groups = sorted(per_group[0])
        label = {g: names[g] if g < len(names) else str(g) for g in groups}
        by_group = {label[g]: summary([r[g] for r in per_group]) for g in groups}
        worst = [min(r.values()) for r in per_group]
        return {"groups": by_group, "worst_group_top1": summary(worst)}


def artifact_geometry(artifact: DistilledSet, cfg: EvalConfig) -> tuple[int, int]:
    from lgm.artifacts import MAX_SIDE

    # DistilledSet.load has checked the stored res/crop against the images (integers, res = their side).
    stored = artifact.meta.get("config", {}) if isinstance(artifact.meta.get("config"), dict) else {}
    res = cfg.res or int(stored.get("res") or artifact.images.shape[-1])
    crop = cfg.crop or int(stored.get("crop") or res)
    if not 0 < crop <= res <= MAX_SIDE:
        raise UsageError(f"need 0 < crop ({crop}) <= res ({res}) <= {MAX_SIDE}; check --res/--crop")
    return res, crop


def check_artifact(artifact: DistilledSet, ds: ImageDataset, where: str) -> None:
    check_split(artifact.meta.get("split"), ds, where)
    if artifact.num_classes != ds.num_classes or artifact.labels.max() >= ds.num_classes:
        raise LgmError(f"{where} has {artifact.num_classes} classes but dataset {ds.name} has {ds.num_classes}")
    if artifact.class_names != list(ds.class_names):
        raise LgmError(f"{where}: its class names differ from those of dataset {ds.name}")
    if artifact.images.shape[1] not in (1, 3):
        raise LgmError(f"{where}: images must have 1 or 3 channels, got {artifact.images.shape[1]}")
    if not torch.isfinite(artifact.images).all():
        raise LgmError(f"{where}: images contain NaN or infinite values")


def weights_label(bb: Backbone) -> str:
    """Which weights a result was computed with, for eval.json and reports."""
    return "random-init" if bb.random_init else (bb.weights_id or "default")


def distilled_with(artifact: DistilledSet) -> tuple:
    """The backbone(s) an artifact was made with: one name, or every backbone of a joint run (empty: unknown)."""
    own = artifact.meta.get("backbone")
    if isinstance(own, list):
        return tuple(own)
    return (own,) if own else ()


def evaluate_artifact(artifact: DistilledSet, cfg: EvalConfig, where: str = "artifact", log=print,
                      dataset: ImageDataset | None = None) -> dict:
    """Probe results of ``artifact`` on each backbone of ``cfg``: top-1/top-5 over repeats and 1-NN.

    ``dataset``: the dataset to score on, e.g. one built in memory (default: loaded by
    ``cfg.dataset`` or the name the artifact records).
    """
    from lgm.data import load_dataset
    from lgm.devices import resolve_device

    device = resolve_device(cfg.device)
    ds_name = cfg.dataset or artifact.meta.get("dataset")
    if dataset is None and not ds_name:
        raise LgmError(f"{where} does not record its dataset; pass --dataset")
    ds = dataset if dataset is not None else load_dataset(ds_name, cfg.data_root, cfg.on_bad_image)
    check_artifact(artifact, ds, where)
    res, crop = artifact_geometry(artifact, cfg)
    images = torch.nn.functional.interpolate(artifact.images, size=(res, res), mode="bilinear",
                                             align_corners=False, antialias=True) \
        if artifact.images.shape[-1] != res else artifact.images
    store = FeatureStore(cfg.cache_dir, enabled=cfg.cache)
    backbones = cfg.backbone or distilled_with(artifact)
    if not all(backbones):
        raise LgmError(f"{where} does not record its backbone; pass --backbone")
    recorded, own = recorded_specs(artifact.meta), distilled_with(artifact)
    specs = [cfg.spec_for(name, recorded, backbones, own[0] if len(own) == 1 else None, where) for name in backbones]
    results = {}
    for spec in specs:
        name = spec.name
        bb = spec.load(device)
        ctx = EvalContext.build(ds, bb, res, crop, device, cfg.probe(), cfg.val_per_class, store=store)
        scores = ctx.score_images(images, artifact.labels, list(range(cfg.repeats)))
        log(f"{where} on {name}: top-1 {scores['top1']['mean'] * 100:.1f} ± {scores['top1']['std'] * 100:.1f}, "
            f"1-NN {scores['nn1'] * 100:.1f}")
        results[name] = scores | {"protocol": ctx.protocol(len(images)), "dataset": ds.name, "images": int(len(images)),
                                  "random_init_backbone": bool(bb.random_init),
                                  "weights": weights_label(bb)}
    return results


def evaluate_full_reference(ref: dict, cfg: EvalConfig, where: str = "full", log=print) -> dict:
    """The full-dataset reference: a probe on every training image outside the validation split (SPEC §7)."""
    from lgm.data import load_dataset
    from lgm.devices import resolve_device

    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset or ref["dataset"], cfg.data_root, cfg.on_bad_image)
    stored = ref.get("config", {})
    res, crop = cfg.res or int(stored.get("res", 256)), cfg.crop or int(stored.get("crop", 224))
    store = FeatureStore(cfg.cache_dir, enabled=cfg.cache)
    names = tuple(cfg.backbone or ())
    recorded = recorded_specs(ref)
    specs = [cfg.spec_for(name, recorded, names, ref.get("backbone"), where) for name in names]
    results = {}
    for spec in specs:
        name = spec.name
        bb = spec.load(device)
        probe_cfg = full_probe(cfg.protocol)
        ctx = EvalContext.build(ds, bb, res, crop, device, probe_cfg, cfg.val_per_class, store=store)
        feats = stored_split_features(ds, "train", ctx.train_index, bb, res, crop, device, store)
        labels = ds.train.labels[ctx.train_index]
        probe = train_probes(feats, labels, ds.num_classes, probe_cfg, list(range(cfg.repeats)),
                             val=(ctx.val_features, ctx.val_labels), device=device)
        top1 = topk(probe, ctx.test_features, ctx.test_labels, 1).tolist()
        top5 = topk(probe, ctx.test_features, ctx.test_labels, 5).tolist()
        nn1 = nearest_neighbor_top1(feats, labels, ctx.test_features, ctx.test_labels)
        log(f"{where} on {name}: top-1 {statistics.fmean(top1) * 100:.1f}, 1-NN {nn1 * 100:.1f}")
        results[name] = {"top1": summary(top1), "top5": summary(top5), "nn1": nn1, "epochs": probe.epoch.tolist(),
                         "protocol": ctx.protocol(len(labels)) | {"views": "1 center view per image"}, "dataset": ds.name,
                         "images": int(len(labels)), "random_init_backbone": bool(bb.random_init),
                         "weights": weights_label(bb)}
    if not results:
        raise LgmError(f"{where}: name the backbone(s) to probe with --backbone")
    return results


def load_full_reference(path: Path) -> dict | None:
    """The full-dataset reference JSON at ``path`` (a file or a directory holding full.json), else None."""
    from lgm.artifacts import read_json

    candidate = path / "full.json" if path.is_dir() else path
    if candidate.suffix == ".json" and candidate.is_file():
        ref = read_json(candidate)
        if isinstance(ref, dict) and ref.get("kind") == "full-dataset":
            return ref
    return None


def eval_json_path(source: Path) -> Path:
    return (source if source.is_dir() else source.parent) / "eval.json"


def format_eval_table(rows: list[tuple[str, str, dict]]) -> str:
    grouped = any("worst_group_top1" in r for _, _, r in rows)
    head = "| artifact | backbone | top-1 (%) | top-5 (%) | 1-NN (%) |" + (" worst group (%) |" if grouped else "")
    lines = [head, "|---" * (6 if grouped else 5) + "|"]
    for where, name, r in rows:
        t1, t5 = r["top1"], r["top5"]
        line = (f"| {where} | {name} | {t1['mean'] * 100:.1f} ± {t1['std'] * 100:.1f} | "
                f"{t5['mean'] * 100:.1f} ± {t5['std'] * 100:.1f} | {r['nn1'] * 100:.1f} |")
        if grouped:
            wg = r.get("worst_group_top1")
            line += f" {wg['mean'] * 100:.1f} ± {wg['std'] * 100:.1f} |" if wg else " |"
        lines.append(line)
    return "\n".join(lines)


def run_eval(sources: tuple[str, ...], cfg: EvalConfig, as_json: bool = False) -> dict:
    """``lgm eval``: evaluate every artifact, merge results into each one's eval.json, print a table."""
    import json
    import sys

    from lgm.artifacts import atomic_write_json, read_json_object

    if not sources:
        raise UsageError("name at least one artifact (a run directory or an .safetensors/.json file)")
    # Every eval.json that results are merged into is read before any probe trains, so that a damaged one
    # fails at once rather than after the work (and the artifacts too: a bad one stops nothing half-done).
    existing = {}
    for src in sources:
        out = eval_json_path(Path(src))
        existing[src] = read_json_object(out, "an evaluation record") if out.is_file() else {}
    everything, rows = {}, []
    for src in sources:
        path = Path(src)
        log = lambda m: print(f"lgm eval: {m}", file=sys.stderr, flush=True)  # noqa: E731
        ref = load_full_reference(path)
        if ref is not None:
            results = evaluate_full_reference(ref, cfg, where=src, log=log)
        else:
            results = evaluate_artifact(DistilledSet.load(path), cfg, where=src, log=log)
        out = eval_json_path(path)
        stored = read_json_object(out, "an evaluation record") if out.is_file() else existing[src]
        for name, r in results.items():
            stored[f"{name}/{cfg.protocol}"] = r
            rows.append((src, name, r))
        atomic_write_json(out, stored)
        everything[src] = results
    print(json.dumps(everything, indent=2) if as_json else format_eval_table(rows))
    return everything


def _own_backbones(row: dict) -> list[str]:
    """The backbones a crossmodel row's artifact was distilled with (one name, or a list for a joint set)."""
    return row["distilled_with"] if isinstance(row["distilled_with"], list) else [row["distilled_with"]]


def crossmodel_matrix(sources: tuple[str, ...], cfg: EvalConfig, out: Path, log=print) -> dict:
    """Every artifact on every backbone (the paper's Table 2): JSON, CSV and markdown in ``out``.

    Rows are artifacts (labelled by the backbone they were distilled with when
    they record one), columns the evaluating backbones; the same-model entry is
    where the two agree, and each row's cross-model average leaves it out.
    """
    from lgm.artifacts import atomic_write_json, atomic_write_text

    if not cfg.backbone:
        raise UsageError("name the evaluating backbones with --backbone B1 B2 ...")
    rows = []
    for src in sources:
        artifact = DistilledSet.load(Path(src))
        results = evaluate_artifact(artifact, cfg, where=src, log=log)
        # A joint artifact (distilled with several backbones) has a same-model entry on each of them.
        own = distilled_with(artifact)
        accs = {name: r["top1"]["mean"] for name, r in results.items()}
        cross = [a for name, a in accs.items() if name not in own]
        same = [accs[name] for name in own if name in accs]
        rows.append({"artifact": src, "distilled_with": artifact.meta.get("backbone"), "top1": accs,
                     "std": {name: r["top1"]["std"] for name, r in results.items()},
                     "nn1": {name: r["nn1"] for name, r in results.items()},
                     "same_model": (same[0] if len(own) == 1 else statistics.fmean(same)) if same else None,
                     "cross_model_mean": statistics.fmean(cross) if cross else None})
    matrix = {"backbones": list(cfg.backbone), "rows": rows, "protocol": dataclasses.asdict(cfg.probe()) | {"repeats": cfg.repeats}}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "crossmodel.json", matrix)
    header = ["artifact", "distilled with", *cfg.backbone, "cross-model mean"]
    csv = [",".join(header)]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        own = _own_backbones(r)
        label = "+".join(map(str, own))
        cells = [f"{r['top1'][b] * 100:.1f}" for b in cfg.backbone]
        cross = "" if r["cross_model_mean"] is None else f"{r['cross_model_mean'] * 100:.1f}"
        csv.append(",".join([r["artifact"], label, *cells, cross]))
        marked = [f"**{c}**" if b in own else c for b, c in zip(cfg.backbone, cells)]
        md.append("| " + " | ".join([r["artifact"], label, *marked, cross]) + " |")
    atomic_write_text(out / "crossmodel.csv", "\n".join(csv) + "\n")
    nn = ["| " + " | ".join(["artifact", "distilled with", *cfg.backbone]) + " |", "|" + "---|" * (len(cfg.backbone) + 2)]
    for r in rows:
        cells = [f"{r['nn1'][b] * 100:.1f}" for b in cfg.backbone]
        nn.append("| " + " | ".join([r["artifact"], "+".join(map(str, _own_backbones(r))), *cells]) + " |")
    atomic_write_text(out / "crossmodel.md", "\n".join(md) + "\n\nBold: same-model entry (the evaluating backbone "
                      "is one the artifact was distilled with; a joint set has one per distilling backbone). Top-1 %, mean over "
                      "repeats; the cross-model mean leaves every same-model entry out.\n\n"
                      "1-NN accuracy (%, cosine, center views; the input of `lgm alignment-vs-transfer`):\n\n"
                      + "\n".join(nn) + "\n")
    return matrix
