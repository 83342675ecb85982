"""Backbone registry: names -> frozen feature extractors with their own preprocessing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from lgm.backbones.base import Backbone, BackboneInfo
from lgm.backbones.effnet import build_effnet, effnet_info
from lgm.backbones.toy import TOY_INFO, build_toy
from lgm.registry import Registry

__all__ = ["Backbone", "BackboneInfo", "BackboneEntry", "BACKBONES", "register_backbone", "load_backbone", "list_backbones"]


@dataclass(frozen=True)
class BackboneEntry:
    info: BackboneInfo
    build: Callable[[bool, str | None], nn.Module]  # (random_init, weights path) -> model on normalized input
    always_random: bool = False  # toy models have no pretrained weights at all


BACKBONES: Registry[BackboneEntry] = Registry("backbone")


def register_backbone(entry: BackboneEntry) -> BackboneEntry:
    return BACKBONES.register(entry.info.name, entry)


for _v in (0, 1, 2):
    register_backbone(BackboneEntry(effnet_info(_v), lambda r, w, v=_v: build_effnet(v, r, w)))
register_backbone(BackboneEntry(TOY_INFO, build_toy, always_random=True))


def list_backbones() -> list[BackboneInfo]:
    return [BACKBONES.get(n).info for n in BACKBONES.names()]


def load_backbone(
    name: str,
    device: torch.device | str = "cpu",
    random_init: bool = False,
    weights: str | None = None,
) -> Backbone:
    """Build backbone ``name`` frozen, in eval mode, on ``device``.

    ``random_init`` skips loading weights (tests and speed benchmarks only; the
    flag is recorded in every artifact made with it).
    """
    entry = BACKBONES.get(name)
    model = entry.build(random_init, weights)
    return Backbone(entry.info, model, random_init=random_init or entry.always_random).to(device)
