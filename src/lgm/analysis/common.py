"""What the run-level analyses share: a run's artifact, its dataset and backbone, and their features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lgm.artifacts import DistilledSet
from lgm.backbone_spec import BackboneFlags
from lgm.errors import LgmError
from lgm.command_configs import RunSource  # noqa: F401  (re-exported)


@dataclass
class RunContext:
    path: Path
    artifact: DistilledSet
    dataset: object  # lgm.data.ImageDataset
    backbone: object  # lgm.backbones.Backbone
    res: int
    crop: int
    device: torch.device
    store: object  # lgm.feature_store.FeatureStore

    def real_index(self, n: int, seed: int) -> torch.Tensor:
        """All training images (n = 0) or a seeded stratified sample of about n."""
        from lgm.analysis.alignment import aligned_sample

        labels = self.dataset.train.labels.cpu()
        if n <= 0 or n >= len(labels):
            return torch.arange(len(labels))
        return aligned_sample(labels, self.dataset.num_classes, n, seed)

    def real_features(self, index: torch.Tensor) -> torch.Tensor:
        """Center-view features of training rows ``index`` (the evaluation's test transform), via the store."""
        from lgm.evaluate import stored_split_features

        return stored_split_features(self.dataset, "train", index, self.backbone, self.res, self.crop, self.device,
                                     self.store)

    def distilled_features(self) -> torch.Tensor:
        from lgm.probe import center_features

        images = self.artifact.images
        if images.shape[-1] != self.res:
            images = torch.nn.functional.interpolate(images, size=(self.res, self.res), mode="bilinear",
                                                     align_corners=False, antialias=True)
        return center_features(self.backbone, images, self.crop, self.device)


def open_source(run: str | Path, src: RunSource) -> RunContext:
    """``open_run`` with the flags of an analysis command (its RunSource settings)."""
    return open_run(run, src.backbone, src.device, src.data_root, src.cache_dir, src.cache, src.on_bad_image,
                    flags=src)


def open_run(run: str | Path, backbone: str | None = None, device: str = "auto", data_root: str | None = None,
             cache_dir: str | None = None, cache: bool = True, on_bad_image: str = "fail",
             flags: BackboneFlags | None = None) -> RunContext:
    """Load a run directory (or artifact) with the dataset and backbone it records (``backbone`` overrides).

    The backbone is built as the artifact records it (weights file checked by sha256, normalization,
    random init), unless ``flags`` (--weights, --random-init, --normalization) say otherwise.
    """
    from lgm.backbone_spec import recorded_specs
    from lgm.data import load_dataset
    from lgm.devices import resolve_device
    from lgm.evaluate import check_artifact
    from lgm.feature_store import FeatureStore

    path = Path(run)
    artifact = DistilledSet.load(path)
    ds_name = artifact.meta.get("dataset")
    bb_name = backbone or artifact.meta.get("backbone")
    if not ds_name or not bb_name:
        raise LgmError(f"{path} does not record its dataset and backbone (distilled.json); pass --backbone")
    dev = resolve_device(device)
    stored = artifact.meta.get("config", {})
    # The run's own --data-root unless overridden (then $LGM_DATA_ROOT and the default locations).
    ds = load_dataset(ds_name, data_root or stored.get("data_root"), on_bad_image)
    check_artifact(artifact, ds, str(path))
    res = int(stored.get("res") or artifact.images.shape[-1])
    crop = int(stored.get("crop") or res)
    flags = flags or BackboneFlags()
    bb = flags.spec_for(bb_name, recorded_specs(artifact.meta), [bb_name], bb_name, str(path)).load(dev)
    return RunContext(path, artifact, ds, bb, res, crop, dev, FeatureStore(cache_dir, enabled=cache))


def analysis_dir(run: str | Path, out: str | None) -> Path:
    """Where a run's analysis files go: --out, else <run>/analysis (beside the artifact for artifact files)."""
    if out:
        return Path(out)
    p = Path(run)
    return (p if p.is_dir() else p.parent) / "analysis"
