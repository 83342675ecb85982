"""The pyramid's level count and growth schedule: plain arithmetic, importable without torch (config checks)."""

from __future__ import annotations

import math

PAPER_GROW_EVERY = 200
PAPER_STEPS = 5000


def num_levels_for(resolution: int) -> int:
    """Levels 1, 2, 4, ..., resolution: log2(resolution) + 1."""
    if resolution < 1 or resolution & (resolution - 1):
        raise ValueError(f"pyramid resolution must be a power of two, got {resolution}")
    return int(math.log2(resolution)) + 1


def default_grow_every(steps: int) -> int:
    """The paper grows every 200 of 5000 steps; shorter runs scale that interval linearly.

    ``grow_every = max(1, round(200 * steps / 5000))`` for steps < 5000, else 200: a
    run of any length reaches the full pyramid at the same fraction of its
    schedule as the paper's (1600 / 5000 = 32% for 256 px).
    """
    if steps >= PAPER_STEPS:
        return PAPER_GROW_EVERY
    return max(1, round(PAPER_GROW_EVERY * steps / PAPER_STEPS))
