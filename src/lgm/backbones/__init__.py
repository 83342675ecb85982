"""Backbone registry: names -> frozen feature extractors with their own preprocessing.

Registered names (``lgm backbones`` lists them) plus ``timm:<model_name>`` for
any timm model, resolved on demand. Building a backbone never touches the
network: weights come from an installed package, a Hugging Face cache already
on disk, or a file (``weights=``); ``random_init=True`` skips them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from lgm.backbones import effnet, opennsfw, timm_any, vit
from lgm.backbones.base import NORMALIZATIONS, Backbone, BackboneInfo
from lgm.backbones.toy import TOY_INFO, build_toy
from lgm.errors import LgmError, UnknownNameError
from lgm.registry import Registry

__all__ = [
    "Backbone",
    "BackboneInfo",
    "BackboneEntry",
    "BACKBONES",
    "NORMALIZATIONS",
    "register_backbone",
    "load_backbone",
    "list_backbones",
    "weights_on_disk",
]


@dataclass(frozen=True)
class BackboneEntry:
    info: BackboneInfo
    # (random_init, weights path or None, input size or None for the native one) -> model on normalized input
    build: Callable[[bool, str | None, int | None], nn.Module]
    always_random: bool = False  # toy models have no pretrained weights at all
    # Where the default weights lie when they are on disk (None: not there); None: no default weights exist.
    locate: Callable[[], Path | None] | None = None


class BackboneRegistry(Registry[BackboneEntry]):
    """The registry, plus ``timm:<model_name>`` entries made on request (never listed, never stored)."""

    def get(self, name: str) -> BackboneEntry:
        if name.startswith(timm_any.PREFIX) and name not in self._items:
            return timm_entry(name)
        if name not in self._items:
            import timm

            # "resnet18" is a timm model: timm:resnet18 comes before lgm's own (unrelated) near-matches.
            exact = [timm_any.PREFIX + name] if timm.is_model(name) else []
            close = [] if exact else [timm_any.PREFIX + m for m in timm_any.timm_suggestions(name, 3)]
            raise UnknownNameError(self.kind, name, list(self._items), also=exact,
                                   extra="Any timm model works as timm:<model_name>"
                                         + (f" (close: {', '.join(close)})." if close else "."))
        return super().get(name)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str) and name.startswith(timm_any.PREFIX):
            try:
                timm_any.check_name(name[len(timm_any.PREFIX):])
            except UnknownNameError:
                return False
            return True
        return super().__contains__(name)


BACKBONES = BackboneRegistry("backbone")


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    return BACKBONES.register(entry.info.name, entry)


def timm_entry(name: str, input_size: int | None = None) -> BackboneEntry:
    return BackboneEntry(
        timm_any.timm_info(name, input_size),
        lambda r, w, s, n=name: timm_any.build_timm(n, r, w, s),
        locate=lambda n=name: timm_any.default_weights(n),
    )


for _v in (0, 1, 2):
    register_backbone(BackboneEntry(effnet.effnet_info(_v), lambda r, w, s, v=_v: effnet.build_effnet(v, r, w, s),
                                    locate=lambda v=_v: effnet.default_weights(v)))
for _spec in vit.SPECS:
    register_backbone(BackboneEntry(vit.vit_info(_spec), lambda r, w, s, sp=_spec: vit.build_vit(sp, r, w, s),
                                    locate=lambda sp=_spec: vit.default_weights(sp)))
register_backbone(BackboneEntry(opennsfw.OPENNSFW_INFO, opennsfw.build_opennsfw, locate=opennsfw.locate_onnx))
register_backbone(BackboneEntry(TOY_INFO, build_toy, always_random=True))


def list_backbones() -> list[BackboneInfo]:
    return [BACKBONES.get(n).info for n in BACKBONES.names()]


def weights_on_disk(name: str) -> Path | None | bool:
    """The default weights of ``name`` if they are on disk; None if not; True for backbones that need none."""
    entry = BACKBONES.get(name)
    if entry.always_random or entry.locate is None:
        return True
    return entry.locate()


def load_backbone(
    name: str,
    device: torch.device | str = "cpu",
    random_init: bool = False,
    weights: str | None = None,
    normalization: str = "native",
    input_size: int | None = None,
    grad_checkpointing: bool = False,
) -> Backbone:
    """Build backbone ``name`` frozen, in eval mode, on ``device``.

    ``random_init`` skips loading weights (tests and speed benchmarks only; the
    flag is recorded in every artifact made with it). ``weights`` is a local
    file (safetensors or a weights-only torch checkpoint, in timm's or the
    official release's layout); without it the installed or cached weights are
    used, and their absence is an error naming what to provide.
    ``normalization`` is ``"native"`` (the backbone's own statistics) or
    ``"imagenet"`` (ImageNet statistics for every backbone, as the authors'
    code does). ``input_size`` overrides the side images are resized to (ViTs
    are then built for that token grid). ``grad_checkpointing`` recomputes
    activations in the backward pass to save memory.
    """
    if normalization not in NORMALIZATIONS:
        raise UnknownNameError("normalization", normalization, list(NORMALIZATIONS))
    entry = BACKBONES.get(name)
    info = entry.info
    if input_size is not None and input_size != info.input_size:
        if input_size <= 0:
            raise LgmError(f"input_size must be positive, got {input_size}")
        if info.fixed_input_size:
            raise LgmError(f"{name} takes {info.input_size} x {info.input_size} inputs only, not {input_size}")
        if name.startswith(timm_any.PREFIX):
            entry = timm_entry(name, input_size)  # the feature dimension may depend on the size
        info = dataclasses.replace(entry.info, input_size=input_size)
    if weights is not None and random_init:
        raise LgmError("give either weights or random_init, not both")
    model = entry.build(random_init, weights, input_size)
    backbone = Backbone(info, model, random_init=random_init or entry.always_random, normalization=normalization,
                        grad_checkpointing=grad_checkpointing).to(device)
    if weights is not None:
        from lgm.digests import weights_sha256

        # Features of two files are two different things (the feature store keys on this).
        backbone.weights_id = f"sha256:{weights_sha256(weights)[:16]}"
    return backbone
