"""Any timm model as a backbone: ``timm:<model_name>[.<tag>]``.

Features are timm's pooled pre-logits (``forward_features`` then
``forward_head(pre_logits=True)``); mean, std and input size come from timm's
pretrained config of that name. The feature dimension is probed by a forward
pass on the meta device (no memory, no compute), so a listing or a config
check never builds real weights.
"""

from __future__ import annotations

import functools
import importlib

import torch
from torch import nn

from lgm.backbones.base import BackboneInfo
from lgm.backbones.weights import (
    HF_WEIGHT_FILES,
    create_for_loading,
    find_in_hf_cache,
    fit_state_dict,
    missing_hf_weights,
    read_weights_file,
)
from lgm.errors import LgmError, UnknownNameError

PREFIX = "timm:"


class PreLogits(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.net.set_grad_checkpointing(enable)


def check_name(model_name: str) -> None:
    import timm

    if not timm.is_model(model_name):
        known = timm.list_models() + timm.list_pretrained()
        raise UnknownNameError("timm model", model_name, known)


def _create(model_name: str, input_size: int | None) -> nn.Module:
    import timm

    if input_size is not None:
        try:
            # Models with a fixed token grid (ViTs) are built for the requested size.
            return timm.create_model(model_name, pretrained=False, img_size=input_size).eval()
        except TypeError:
            pass  # convolutional models take any size; the Backbone resizes
    return timm.create_model(model_name, pretrained=False).eval()


@functools.lru_cache(maxsize=64)
def timm_info(name: str, input_size: int | None = None) -> BackboneInfo:
    model_name = name[len(PREFIX):]
    check_name(model_name)
    with torch.device("meta"):
        net = _create(model_name, input_size)
    cfg = net.pretrained_cfg
    size = input_size or int(cfg["input_size"][-1])
    with torch.no_grad():
        dim = PreLogits(net)(torch.empty(1, 3, size, size, device="meta")).shape[-1]
    hub = cfg.get("hf_hub_id")
    return BackboneInfo(
        name=name,
        feature_dim=int(dim),
        mean=tuple(float(m) for m in cfg["mean"]),
        std=tuple(float(s) for s in cfg["std"]),
        input_size=size,
        weights=f"HF cache {hub} or --weights" if hub else "--weights (timm has no hub repository for it)",
        feature="timm pooled pre-logits (forward_head(pre_logits=True))",
        source=f"timm {model_name}",
        normalization="timm pretrained cfg mean/std",
    )


def _hub_id(model_name: str) -> str | None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    return None if cfg is None else cfg.hf_hub_id


def default_weights(name: str):
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name[len(PREFIX):])
    if cfg is None or not cfg.hf_hub_id:
        return None
    # Some configs point at one named file of a foreign repository (e.g. open_clip's); timm's own repos hold
    # model.safetensors / pytorch_model.bin.
    return find_in_hf_cache(cfg.hf_hub_id, (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_WEIGHT_FILES)


def build_timm(name: str, random_init: bool, weights: str | None, input_size: int | None) -> nn.Module:
    model_name = name[len(PREFIX):]
    if random_init:
        return PreLogits(_create(model_name, input_size))
    if weights is None:
        found = default_weights(name)
        if found is None:
            raise missing_hf_weights(name, _hub_id(model_name), "a timm-layout safetensors or state-dict file")
        weights = str(found)
    from lgm.backbones.layouts import unwrap

    raw = read_weights_file(weights, name)
    net = create_for_loading(lambda: _create(model_name, input_size))
    try:
        state, _ = unwrap(raw)
    except ValueError as e:
        raise LgmError(f"{weights} is not a checkpoint lgm can read for {name}: {e}") from None
    # Each timm model file ships the conversion its pretrained weights need
    # (e.g. position-embedding resampling, original-release names); apply it
    # when present, as timm's own loader would.
    module = importlib.import_module(type(net).__module__)
    filter_fn = getattr(module, "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state = filter_fn(state, net)
    fit_state_dict(net, state, name, weights, "timm layout")
    return PreLogits(net)
