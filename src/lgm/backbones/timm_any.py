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
from pathlib import Path

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
from lgm.errors import LgmError, MissingResourceError, UnknownNameError

PREFIX = "timm:"


class PreLogits(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.net.set_grad_checkpointing(enable)


HUB_SOURCE = "hf-hub:"
LOCAL_SOURCE = "local-dir:"


def _hub_snapshot(repo_id: str) -> Path:
    """The local HF cache snapshot of a timm model repository (its config.json is there); never downloads."""
    from lgm.backbones.weights import find_in_hf_cache, hf_cache_entry

    repo_id = repo_id.split("@", 1)[0]
    found = find_in_hf_cache(repo_id, ("config.json",))
    if found is None:
        raise MissingResourceError(
            f"timm:{HUB_SOURCE}{repo_id} is read from the local Hugging Face cache only, and its config.json is not "
            f"there ({hf_cache_entry(repo_id)}); lgm never downloads. Fetch it once on a machine with network "
            f"(`hf download {repo_id}`) and copy the cache entry, or point HF_HUB_CACHE at a cache that holds it; "
            "a folder holding config.json + model.safetensors also works as timm:local-dir:PATH"
        )
    return found.parent


def timm_model_name(model_name: str) -> str:
    """The name timm.create_model gets: hf-hub:ORG/NAME becomes local-dir:<its snapshot in the HF cache>."""
    if model_name.startswith(HUB_SOURCE):
        return LOCAL_SOURCE + str(_hub_snapshot(model_name[len(HUB_SOURCE):]))
    return model_name


def check_name(model_name: str) -> None:
    """Fail with a short error and close timm names for a model timm does not know."""
    import timm

    if model_name.startswith(HUB_SOURCE):
        _hub_snapshot(model_name[len(HUB_SOURCE):])
        return
    if model_name.startswith(LOCAL_SOURCE):
        folder = Path(model_name[len(LOCAL_SOURCE):])
        if not (folder / "config.json").is_file():
            raise MissingResourceError(f"timm:{model_name}: {folder / 'config.json'} not found (a local-dir model "
                                       "is a folder holding timm's config.json and model.safetensors)")
        return
    if not timm.is_model(model_name):
        raise UnknownNameError("timm model", model_name, timm_suggestions(model_name), listing=False,
                               extra="List timm's models with: python -c \"import timm; "
                                     "print(timm.list_models('*PATTERN*', pretrained=True))\"")


def timm_suggestions(name: str, n: int = 5) -> list[str]:
    """timm architectures and pretrained tags closest to ``name``."""
    import difflib

    import timm

    base = name.split(".", 1)[0]
    close = difflib.get_close_matches(name, timm.list_models() + timm.list_pretrained(), n=n, cutoff=0.6)
    close += [m for m in difflib.get_close_matches(base, timm.list_models(), n=n, cutoff=0.6) if m not in close]
    return close[:n]


def _create(model_name: str, input_size: int | None) -> nn.Module:
    import timm

    model_name = timm_model_name(model_name)
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
    hub = cfg.get("hf_hub_id") or _hub_id(model_name)
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

    if model_name.startswith(HUB_SOURCE):
        return model_name[len(HUB_SOURCE):].split("@", 1)[0]
    if model_name.startswith(LOCAL_SOURCE):
        return None
    cfg = get_pretrained_cfg(model_name)
    return None if cfg is None else cfg.hf_hub_id


def default_weights(name: str):
    from timm.models import get_pretrained_cfg

    model_name = name[len(PREFIX):]
    if model_name.startswith((HUB_SOURCE, LOCAL_SOURCE)):
        # The weights lie beside the config: timm:hf-hub:ORG/NAME's snapshot, or the local folder.
        try:
            folder = Path(timm_model_name(model_name)[len(LOCAL_SOURCE):])
        except MissingResourceError:
            return None
        return next((folder / f for f in HF_WEIGHT_FILES if (folder / f).is_file()), None)
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
