"""Labelled image datasets as lgm sees them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class ImageSplit:
    """One split held in memory: uint8 images (N x C x H x W, C = 1 or 3) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 N x C x H x W with C in (1, 3), got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    def load(self, index: torch.Tensor, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """Images ``index`` as float in [0, 1], resized to ``size`` x ``size`` on ``device``."""
        x = self.images[index.cpu()].to(device, non_blocking=True).float().div_(255.0)
        if x.shape[-1] != size or x.shape[-2] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        return x

    def subset(self, index: torch.Tensor) -> "ImageSplit":
        return ImageSplit(self.images[index], self.labels[index])


@dataclass
class ImageDataset:
    name: str
    class_names: list[str]
    train: ImageSplit
    test: ImageSplit
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def check(self) -> None:
        for split_name, split in (("train", self.train), ("test", self.test)):
            if len(split) and (split.labels.min() < 0 or split.labels.max() >= self.num_classes):
                raise ValueError(f"{self.name} {split_name}: labels outside 0..{self.num_classes - 1}")
        counts = torch.bincount(self.train.labels, minlength=self.num_classes)
        empty = [self.class_names[i] for i in range(self.num_classes) if counts[i] == 0]
        if empty:
            raise ValueError(f"{self.name}: classes with no training images: {', '.join(empty)}")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"{self.name}: duplicate class names")


def stratified_indices(labels: torch.Tensor, per_class: int, generator: torch.Generator) -> torch.Tensor:
    """``per_class`` random indices of every class (all of a class when it has fewer)."""
    picks = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        perm = torch.randperm(idx.numel(), generator=generator)[:per_class]
        picks.append(idx[perm])
    return torch.cat(picks)
