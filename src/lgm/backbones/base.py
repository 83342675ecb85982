"""The frozen feature extractor every part of lgm talks to."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
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

# Bulk no-grad passes of a convnet on the CPU (split features, real-feature caches, probe view pools) run a
# torch.compile'd copy of the model: EfficientNet-Lite0 at 128 px, channels-last batches of 16, 2 threads, gave
# 1.7-1.9x the eager images/s, for 48 s of compilation (7 s from inductor's on-disk cache). Compiled
# forward+backward passes were 2x slower, so distillation never uses it. A scope of fewer images than this
# does not pay for the compilation (unless the model is compiled already). LGM_COMPILE_FEATURES=0: never.
COMPILE_MIN_IMAGES = 5000


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
        # Plain attributes, not submodules: the compiled copy shares the model's weights and stays out of
        # state_dict and .to().
        object.__setattr__(self, "_bulk", False)
        object.__setattr__(self, "_compiled", None)  # None: not tried; False: failed, eager from then on

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
        compiled = self._compiled_for(x) if x.shape[0] >= step else None  # a call smaller than a piece: eager
        if compiled is not None:
            try:
                return self._fixed_pieces(compiled, x, step)
            except Exception as e:  # no C++ compiler, an op inductor cannot lower: eager from now on
                object.__setattr__(self, "_compiled", False)
                print(f"lgm: warning: torch.compile of {self.name} for feature extraction failed "
                      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); running it eagerly",
                      file=sys.stderr, flush=True)
        if step >= x.shape[0]:
            return self.model(x)
        return torch.cat([self.model(part) for part in x.split(step)])

    @contextlib.contextmanager
    def bulk_inference(self, images: int):
        """Scope of a no-grad pass over ``images`` images (see COMPILE_MIN_IMAGES): a CPU convnet runs
        compiled inside it when the work pays for the compilation."""
        previous = self._bulk
        pays = images >= COMPILE_MIN_IMAGES or isinstance(self._compiled, nn.Module)
        object.__setattr__(self, "_bulk", previous or pays)
        try:
            yield
        finally:
            object.__setattr__(self, "_bulk", previous)

    def _compiled_for(self, x: torch.Tensor) -> nn.Module | None:
        if (not self._bulk or self._compiled is False or torch.is_grad_enabled() or x.device.type != "cpu"
                or not self.convolutional or os.environ.get("LGM_COMPILE_FEATURES", "1") == "0"):
            return None
        if self._compiled is None:
            # Inductor's CPU backend imports cpp_extension, which warns about a CUDA toolkit on machines that have
            # one but no GPU: nothing a feature pass on the CPU needs to hear about.
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            object.__setattr__(self, "_compiled", torch.compile(self.model, dynamic=False))
        return self._compiled

    @staticmethod
    def _fixed_pieces(model: nn.Module, x: torch.Tensor, step: int) -> torch.Tensor:
        """``model`` over ``x`` (at least ``step`` images) in pieces of exactly ``step`` images, the last one
        zero-padded: one input shape, so one compilation."""
        out = []
        for part in x.split(step):
            n = part.shape[0]
            if n < step:
                part = torch.cat([part, part.new_zeros((step - n, *part.shape[1:]))])
            out.append(model(part)[:n])
        return torch.cat(out) if len(out) > 1 else out[0]

    def micro_batch(self, x: torch.Tensor) -> int:
        """Images per model call for the preprocessed batch ``x`` (all of them except for convnets on CPU)."""
        if x.device.type != "cpu" or not self.convolutional:
            return x.shape[0]
        return max(1, CPU_BATCH_PIXELS // (x.shape[-2] * x.shape[-1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)
