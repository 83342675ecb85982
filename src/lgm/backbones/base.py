"""The frozen feature extractor every part of lgm talks to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lgm.errors import UnknownNameError

# Per-channel statistics, RGB order, on images in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Normalizations a caller may ask for instead of the backbone's own. "imagenet"
# reproduces the authors' code, which normalizes every backbone (CLIP and EVA-02
# included) with the ImageNet statistics.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]] | None] = {
    "native": None,
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
}


@dataclass(frozen=True)
class BackboneInfo:
    """What the registry knows about a backbone before building it."""

    name: str
    feature_dim: int
    mean: tuple[float, float, float]  # native statistics, RGB order, images in [0, 1]
    std: tuple[float, float, float]
    input_size: int | None  # None: any resolution
    weights: str  # where the weights come from, for listings and errors
    feature: str  # how the feature is taken, e.g. "global average pool"
    source: str = ""  # the architecture, e.g. "timm vit_base_patch14_dinov2.lvd142m"
    normalization: str = ""  # the native normalization in words, e.g. "ImageNet mean/std"
    fixed_input_size: bool = False  # True: input_size cannot be overridden (e.g. an ONNX graph)


# Convnets run in channels-last layout (faster kernels on CPU and CUDA), and on
# the CPU in small batches, whose activations stay in cache: EfficientNet-Lite0
# at 128 px runs ~4x faster in channels-last batches of 16 than in NCHW batches
# of 500 (benchmarks/features.py). CPU batches are split to about this many
# input pixels.
CPU_BATCH_PIXELS = 2**18


class Backbone(nn.Module):
    """A frozen network mapping images in [0, 1] to feature vectors.

    It owns the whole preprocessing (greyscale to RGB, resizing to its input
    size, normalization), so callers only ever hand it images in [0, 1]. The
    wrapped ``model`` takes normalized RGB images in NCHW; anything beyond that
    (channel order, memory layout of a foreign graph) is the model's business.
    Convnets get channels-last weights and, on the CPU, cache-sized batches.
    """

    def __init__(
        self,
        info: BackboneInfo,
        model: nn.Module,
        random_init: bool,
        normalization: str = "native",
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise UnknownNameError("normalization", normalization, list(NORMALIZATIONS))
        self.info = info
        self.model = model
        self.random_init = random_init
        self.weights_id: str | None = None  # "sha256:..." when built from a file (load_backbone sets it)
        self.normalization = normalization
        mean, std = NORMALIZATIONS[normalization] or (info.mean, info.std)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.grad_checkpointing = grad_checkpointing
        if grad_checkpointing:
            # Every model lgm builds implements this (timm models natively, the
            # others in their wrappers); recomputing activations in the backward
            # pass trades compute for memory, the numbers are unchanged.
            model.set_grad_checkpointing(True)
        # Any network with more than a patch-embedding convolution counts as a convnet.
        self.convolutional = sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 2
        if self.convolutional:
            model.to(memory_format=torch.channels_last)
        self.requires_grad_(False)
        self.eval()

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def feature_dim(self) -> int:
        return self.info.feature_dim

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen means frozen: batch-norm statistics and dropout never switch on.
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N x 1 or 3 x H x W) -> the model's normalized RGB input."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.info.input_size
        if size is not None and (x.shape[-1] != size or x.shape[-2] != size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x)
        step = self.micro_batch(x)
        if step >= x.shape[0]:
            return self.model(x)
        return torch.cat([self.model(part) for part in x.split(step)])

    def micro_batch(self, x: torch.Tensor) -> int:
        """Images per model call for the preprocessed batch ``x`` (all of them except for convnets on CPU)."""
        if x.device.type != "cpu" or not self.convolutional:
            return x.shape[0]
        return max(1, CPU_BATCH_PIXELS // (x.shape[-2] * x.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
