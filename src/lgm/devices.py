"""Which device a command runs on, and whether it computes in bf16 there.

Every layer (distillation, evaluation, baselines, caches, analysis) resolves
``--device`` and ``--amp`` the same way, so the two helpers live here, below
all of them: this module imports nothing of lgm but its errors.
"""

from __future__ import annotations

import contextlib

import torch

from lgm.errors import LgmError


def resolve_device(name: str) -> torch.device:
    """``--device``: ``auto`` is CUDA when present, else the CPU; a CUDA device on a machine without one fails."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LgmError(f"--device {name} requested but CUDA is not available on this machine; use --device cpu")
    return device


def autocast_context(cfg, device: torch.device):
    """``--amp`` (``cfg.amp``: off, auto or bf16): bf16 autocast, which ``auto`` turns on on CUDA only."""
    if cfg.amp == "off" or (cfg.amp == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
