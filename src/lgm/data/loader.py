"""Real batches for distillation: class-balanced or uniform sampling, decoded ahead of time off the main thread.

``BatchLoader(split, batch, size, device)`` yields ``(images, labels)`` with
images float in [0, 1], ``size`` x ``size``, already on ``device``. Indices
are drawn on the caller's thread from a seeded generator (so the sequence of
batches is the same whatever the timing), and the next ``prefetch`` batches
are decoded in the background: a file-backed split decodes in its thread pool
(PIL releases the GIL), an in-memory one resizes on the device.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

import torch

from lgm.data.base import Split

Sampling = Literal["uniform", "balanced"]


def balanced_indices(labels: torch.Tensor, n: int, generator: torch.Generator,
                     by_class: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``n`` indices with every class as equally represented as ``n`` allows (the remainder to random classes).

    Within a class, images are drawn without replacement while the class has enough of them.
    """
    if by_class is None:
        by_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]
    k = len(by_class)
    counts = torch.full((k,), n // k, dtype=torch.long)
    counts[torch.randperm(k, generator=generator)[: n % k]] += 1
    picks = []
    for idx, m in zip(by_class, counts.tolist()):
        if m == 0:
            continue
        if m <= idx.numel():
            picks.append(idx[torch.randperm(idx.numel(), generator=generator)[:m]])
        else:
            picks.append(idx[torch.randint(idx.numel(), (m,), generator=generator)])
    return torch.cat(picks)


class BatchLoader:
    """An endless iterator of real batches, ``prefetch`` batches decoded ahead in a background thread."""

    def __init__(self, split: Split, batch: int, size: int, device: torch.device | str = "cpu",
                 sampling: Sampling = "uniform", seed: int = 0, prefetch: int = 2) -> None:
        if batch <= 0 or size <= 0:
            raise ValueError(f"batch and size must be positive, got {batch}, {size}")
        if sampling not in ("uniform", "balanced"):
            raise ValueError(f"sampling must be 'uniform' or 'balanced', got {sampling!r}")
        self.split, self.batch, self.size, self.device = split, batch, size, torch.device(device)
        self.sampling = sampling
        self.generator = torch.Generator().manual_seed(seed)
        labels = split.labels.cpu()
        self._by_class = [torch.nonzero(labels == c).flatten() for c in torch.unique(labels).tolist()]
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lgm-batches")
        self._pending: deque[tuple[torch.Tensor, Future]] = deque()
        self.prefetch = max(1, prefetch)

    def next_indices(self) -> torch.Tensor:
        n = len(self.split)
        if self.sampling == "balanced":
            return balanced_indices(self.split.labels, self.batch, self.generator, self._by_class)
        if self.batch <= n:
            return torch.randperm(n, generator=self.generator)[: self.batch]
        return torch.randint(n, (self.batch,), generator=self.generator)

    def _fill(self) -> None:
        while len(self._pending) < self.prefetch:
            idx = self.next_indices()
            self._pending.append((idx, self._executor.submit(self.split.load, idx, self.size, self.device)))

    def __iter__(self) -> "BatchLoader":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self._fill()
        idx, fut = self._pending.popleft()
        x = fut.result()
        self._fill()  # start decoding the next batch before handing this one out
        return x, self.split.labels[idx.to(self.split.labels.device)].to(self.device)

    def close(self) -> None:
        for _, fut in self._pending:
            fut.cancel()
        self._pending.clear()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> "BatchLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
