"""Labelled image datasets as lgm sees them.

A *split* is anything with ``labels`` (int64, one per image), optional
``groups`` (int64, e.g. class x background for Waterbirds/Spawrious), ``len``,
``load(index, size, device)`` -> float images in [0, 1] of ``size`` x ``size``,
``subset(index)`` and ``materialize(size)`` -> an in-memory :class:`ImageSplit`.
Two kinds exist: :class:`ImageSplit` (uint8 images held in memory: Fashion-MNIST,
digits, a decoded cache) and :class:`lgm.data.images.FileSplit` (image files
on disk, decoded lazily in a thread pool: ImageNet and the other photo sets).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from lgm.errors import DatasetError


@runtime_checkable
class Split(Protocol):
    labels: torch.Tensor
    groups: torch.Tensor | None

    def __len__(self) -> int: ...

    def load(self, index: torch.Tensor, size: int, device: torch.device | str = "cpu") -> torch.Tensor: ...

    def subset(self, index: torch.Tensor) -> "Split": ...

    def materialize(self, size: int) -> "ImageSplit": ...


@dataclass
class ImageSplit:
    """One split held in memory: uint8 images (N x C x H x W, C = 1 or 3), int64 labels, optional int64 groups."""

    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 N x C x H x W with C in (1, 3), got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        self.labels = self.labels.long()
        if self.groups is not None:
            if self.groups.shape != self.labels.shape:
                raise ValueError(f"{len(self.labels)} labels but groups of shape {tuple(self.groups.shape)}")
            self.groups = self.groups.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def load(self, index: torch.Tensor, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``index`` as float in [0, 1], resized to ``size`` x ``size`` on ``device``."""
        x = self.images[index.to(self.images.device)].to(device, non_blocking=True).float().div_(255.0)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def subset(self, index: torch.Tensor) -> "ImageSplit":
        index = index.to(self.images.device)
        groups = self.groups[index.to(self.groups.device)] if self.groups is not None else None
        return ImageSplit(self.images[index], self.labels[index.to(self.labels.device)], groups)

    def materialize(self, size: int, **_) -> "ImageSplit":
        """Already in memory: returned as is (``load`` resizes on the fly, at no decoding cost)."""
        return self

    def fingerprint(self) -> str:
        """Digest of the pixels and labels (memoized: a split is not changed in place)."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256(f"{tuple(self.images.shape)}\n".encode())
            h.update(self.images.cpu().contiguous().numpy().tobytes())
            h.update(self.labels.cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:24]
        return self._fingerprint

    def to(self, device: torch.device | str) -> "ImageSplit":
        groups = self.groups.to(device) if self.groups is not None else None
        return ImageSplit(self.images.to(device), self.labels.to(device), groups)


@dataclass
class ImageDataset:
    """A labelled dataset: train and test splits, class names, an optional official validation split.

    ``meta`` holds what a layout provides beyond labels, e.g. ``wnids`` (ImageNet
    synset ids, one per class) and ``group_names`` (names of the values of
    ``split.groups``).
    """

    name: str
    class_names: list[str]
    train: Split
    test: Split
    source: str = ""
    meta: dict = field(default_factory=dict)
    val: Split | None = None
    """An official validation split (Flowers-102, Waterbirds); None when the dataset has none."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def group_names(self) -> list[str] | None:
        return self.meta.get("group_names")

    def splits(self) -> dict[str, Split]:
        out = {"train": self.train, "test": self.test}
        if self.val is not None:
            out["val"] = self.val
        return out

    def check(self) -> None:
        if self.num_classes < 2:
            raise DatasetError(f"{self.name}: {self.num_classes} class(es) ({', '.join(self.class_names)}); "
                               "distillation and linear probes need at least 2 classes")
        dupes = sorted({n for n in self.class_names if self.class_names.count(n) > 1})
        if dupes:
            raise DatasetError(f"{self.name}: duplicate class names: {', '.join(dupes)} (labels would be ambiguous)")
        for split_name, split in self.splits().items():
            if len(split) and (split.labels.min() < 0 or split.labels.max() >= self.num_classes):
                raise DatasetError(f"{self.name} {split_name}: labels outside 0..{self.num_classes - 1}")
            groups = getattr(split, "groups", None)
            names = self.group_names
            if groups is not None and names is not None and len(groups) and (groups.min() < 0 or groups.max() >= len(names)):
                raise DatasetError(f"{self.name} {split_name}: group ids outside 0..{len(names) - 1}")
        counts = torch.bincount(self.train.labels.cpu(), minlength=self.num_classes)
        empty = [self.class_names[i] for i in range(self.num_classes) if counts[i] == 0]
        if empty:
            raise DatasetError(f"{self.name}: classes with no training images: {', '.join(empty)}")

    def train_val_split(self, fraction: float | None = None, per_class: int | None = None,
                        seed: int = 0) -> tuple[Split, Split]:
        """(train, val) for early stopping and model selection; the test split is never involved.

        With neither ``fraction`` nor ``per_class``: the official validation split
        when the dataset has one (train stays whole), else 10% of every class.
        Otherwise a seeded stratified carve-out of the training split: per class,
        ``per_class`` images or ``round(fraction * n_class)`` (at least 1, and at
        least 1 left for training). The same seed gives the same split.
        """
        if fraction is None and per_class is None:
            if self.val is not None:
                return self.train, self.val
            fraction = 0.1
        train_idx, val_idx = stratified_split(self.train.labels.cpu(), fraction=fraction, per_class=per_class, seed=seed)
        return self.train.subset(train_idx), self.train.subset(val_idx)


def stratified_indices(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """``per_class`` random indices of every class (all of a class when it has fewer)."""
    picks = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        perm = torch.randperm(idx.numel(), generator=generator)[:per_class]
        picks.append(idx[perm])
    return torch.cat(picks)


def stratified_split(labels: torch.Tensor, fraction: float | None = None, per_class: int | None = None,
                     seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (kept, held-out) indices: per class a seeded random ``per_class`` or ``fraction`` is held out.

    A class with a single image keeps it (nothing is held out); every other class
    keeps at least one image and holds out at least one.
    """
    if (fraction is None) == (per_class is None):
        raise ValueError("give exactly one of fraction and per_class")
    if fraction is not None and not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    gen = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        n = idx.numel()
        k = per_class if per_class is not None else round(fraction * n)
        k = 0 if n < 2 else min(max(k, 1), n - 1)
        perm = idx[torch.randperm(n, generator=gen)]
        held.append(perm[:k])
        kept.append(perm[k:])
    return torch.sort(torch.cat(kept)).values, torch.sort(torch.cat(held)).values


CARVE_METHOD = "stratified: per class, a torch.randperm of its images (in sorted order) from one seeded CPU generator"


def carve_test_split(labels: torch.Tensor, class_names: Sequence[str], ids: Sequence[str], test: float | int,
                     seed: int, where: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train indices, test indices, record) of a test split carved from a dataset that has none.

    ``ids`` name the images (relative file paths, split/row ids) in a sorted,
    machine-independent order; ``test`` is a fraction in (0, 1) of every class
    (at least 1 image) or a number of images per class (at least 1 is kept for
    training). A class with a single image cannot give both and is an error
    naming it. The record (``ImageDataset.meta["split"]``) holds the settings
    and sha256 digests of the image list and of the test list, so that a later
    load can prove it carved the same split.
    """
    labels = labels.cpu().long()
    if len(ids) != len(labels):
        raise ValueError(f"{len(ids)} ids but {len(labels)} labels")
    counts = torch.bincount(labels, minlength=len(class_names))
    single = [class_names[c] for c in range(len(class_names)) if counts[c] == 1]
    if single:
        raise DatasetError(f"{where}: cannot carve a test split from class(es) with a single image: "
                           f"{', '.join(single[:20])}{' ...' if len(single) > 20 else ''}. Add images to them, "
                           "remove them, or provide a test split of your own")
    fraction, per_class = (None, int(test)) if isinstance(test, int) else (float(test), None)
    train_idx, test_idx = stratified_split(labels, fraction=fraction, per_class=per_class, seed=seed)
    record = {
        "kind": "carved", "test": test, "seed": int(seed), "method": CARVE_METHOD,
        "images": int(len(labels)), "train_images": int(len(train_idx)), "test_images": int(len(test_idx)),
        "images_sha256": _id_digest(labels, ids, torch.arange(len(labels))),
        "test_sha256": _id_digest(labels, ids, test_idx),
    }
    return train_idx, test_idx, record


def split_fingerprint(split: Split) -> str:
    """What a split's images are, for keys of stored features: its own ``fingerprint()`` (pixels, or files by
    path, size and modification time), or "unknown" for a split type that has none."""
    fp = getattr(split, "fingerprint", None)
    return fp() if callable(fp) else "unknown"


def _id_digest(labels: torch.Tensor, ids: Sequence[str], index: torch.Tensor) -> str:
    h = hashlib.sha256()
    for i in index.tolist():
        h.update(f"{int(labels[i])}\t{ids[i]}\n".encode("utf-8"))
    return h.hexdigest()


def check_split(recorded: dict | None, ds: "ImageDataset", where: str) -> None:
    """Fail when ``ds`` did not carve the test split that ``recorded`` (an artifact's copy of meta["split"]) names.

    Nothing is checked when either side has no carved split (official splits are files, not draws).
    """
    current = ds.meta.get("split")
    if not recorded or not current or recorded.get("kind") != "carved":
        return
    for key in ("images_sha256", "test_sha256"):
        if recorded.get(key) != current.get(key):
            what = "image list" if key == "images_sha256" else "test split"
            raise DatasetError(
                f"the {what} of {ds.name} differs from the one {where} recorded "
                f"(recorded {key} {str(recorded.get(key))[:16]}..., now {str(current.get(key))[:16]}...; "
                f"test {recorded.get('test')}, seed {recorded.get('seed')}): the files changed, or the split was "
                "carved with other settings. Restore the files, or distill again")
