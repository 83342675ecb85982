"""The real side of a distillation step: live features, or features from a cache.

A real side answers one question per step: the head gradient of the real data
for the sampled head. ``LiveReal`` samples images, augments them once and runs
the backbone (the paper's procedure); ``CachedReal`` indexes features of
augmented views computed once per run, which removes the backbone pass and
makes large real batches affordable (with 1 image per class and few classes,
the paper's real batch of ipc*A*C images gives a very noisy gradient).
"""

from __future__ import annotations

import sys

import torch

from lgm.augment import AugmentConfig, ViewAugmenter, augment
from lgm.backbones import Backbone
from lgm.data import Split
from lgm.distributed import SINGLE, Shard
from lgm.matching import head_gradient, head_gradient_sums


class LiveReal:
    """Uniformly sampled real images, augmented once, features without autograd.

    The augmentation of real view i comes from (step seed, i // VIEW_BLOCK), like
    the synthetic views (``ViewAugmenter``), so a process of a distributed run
    augments its shard of the batch exactly as the whole batch would be.
    """

    def __init__(self, split: Split, resolution: int, crop: int, aug: AugmentConfig, backbone: Backbone,
                 device: torch.device, autocast) -> None:
        from lgm.data.images import FileSplit, decoded_bytes_limit

        # File-backed splits are decoded once at the run's resolution (thread pool) when they fit in memory
        # (LGM_MAX_DECODED_BYTES); larger ones (ImageNet-1k at 256 px) are streamed: every step decodes its
        # batch from the files, and the next step's batch is decoded in the background meanwhile.
        self.streaming = isinstance(split, FileSplit) and split.decoded_bytes(resolution) > decoded_bytes_limit()
        if self.streaming:
            self.split = split
            self._prefetch = _Prefetcher()
        else:
            self.split = split.materialize(resolution, progress=sys.stderr.isatty()).to(device)
        self.resolution, self.crop, self.aug = resolution, crop, aug
        self.backbone, self.device, self.autocast = backbone, device, autocast
        self.views = ViewAugmenter(aug, crop, device)

    def __len__(self) -> int:
        return len(self.split)

    def gradient(self, w: torch.Tensor, b: torch.Tensor, n: int, sample_gen: torch.Generator,
                 aug_gen: torch.Generator | None = None, shard: Shard = SINGLE) -> torch.Tensor:
        """Head gradient of n sampled real images; ``sample_gen`` (CPU) draws the images and the views' seed."""
        x, y = self.sample_views(n, sample_gen, shard)
        with torch.no_grad(), self.autocast:
            z = self.backbone.features(x)
        return mean_gradient(z, y, w, b, min(n, len(self.split)), shard)

    def sample_views(self, n: int, sample_gen: torch.Generator, shard: Shard = SINGLE
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of a step's n augmented real views and their labels (one draw from ``sample_gen``)."""
        draw = _draw(len(self.split), n, sample_gen, shard)
        idx, step_seed, s = draw
        if self.streaming:
            x = self._prefetch.take(idx, lambda: self.split.load(idx, self.resolution, self.device))
            # The generator is used by nothing else between steps: the next draw is known now, decode it meanwhile.
            ahead = torch.Generator().set_state(sample_gen.get_state())
            nxt = _draw(len(self.split), n, ahead, shard)[0]
            self._prefetch.start(nxt, lambda: self.split.load(nxt, self.resolution, self.device))
            y = self.split.labels[idx].to(self.device)
        else:
            mine = idx.to(self.device, non_blocking=True)
            x = self.split.load(mine, self.resolution, self.device)
            y = self.split.labels[mine]
        with torch.no_grad():
            return self.views.augment_range(x, s, step_seed), y


def _draw(size: int, n: int, gen: torch.Generator, shard: Shard) -> tuple[torch.Tensor, int, int]:
    """One step's real draw: this process's image indices, the views' seed, and its offset in the batch."""
    idx = torch.randperm(size, generator=gen)[:n]
    step_seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    s, e = shard.bounds(idx.numel())
    return idx[s:e], step_seed, s


class _Prefetcher:
    """Decodes one batch ahead in a background thread; a batch is used only if its indices are the ones asked."""

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lgm-real-prefetch")
        self._pending = None
        self.hits = 0

    def start(self, idx: torch.Tensor, load) -> None:
        self._pending = (idx, self._pool.submit(load))

    def take(self, idx: torch.Tensor, load) -> torch.Tensor:
        pending, self._pending = self._pending, None
        if pending is not None and torch.equal(pending[0], idx):
            self.hits += 1
            return pending[1].result()
        if pending is not None:
            pending[1].cancel()
        return load()


class CachedReal:
    """Rows of a feature cache (views x images, fp16 on the device)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        self.features = features.to(device)
        self.labels = labels.to(device)
        self.device = device

    def __len__(self) -> int:
        return self.features.shape[0]

    def gradient(self, w: torch.Tensor, b: torch.Tensor, n: int, sample_gen: torch.Generator,
                 aug_gen: torch.Generator | None = None, shard: Shard = SINGLE) -> torch.Tensor:
        rows, count = self.draw_rows(n, sample_gen, shard)
        return self.gradient_at(rows, count, w, b, shard)

    def draw_rows(self, n: int, sample_gen: torch.Generator, shard: Shard = SINGLE
                  ) -> tuple[slice | torch.Tensor, int]:
        """This process's rows of a step's real batch of n (all rows when n covers the cache), and the batch size."""
        if n >= len(self):
            s, e = shard.bounds(len(self))
            return slice(s, e), len(self)
        idx = torch.randperm(len(self), generator=sample_gen)[:n]
        s, e = shard.bounds(n)
        return idx[s:e].to(self.device, non_blocking=True), n

    def gradient_at(self, rows: slice | torch.Tensor, count: int, w: torch.Tensor, b: torch.Tensor,
                    shard: Shard = SINGLE) -> torch.Tensor:
        """Mean head gradient of a batch of ``count`` rows of which this process holds ``rows``."""
        return mean_gradient(self.features[rows], self.labels[rows], w, b, count, shard)


def mean_gradient(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, n: int,
                   shard: Shard) -> torch.Tensor:
    """Mean-loss head gradient of n rows of which this process holds z (sums all-reduced over the group)."""
    if not shard.active:
        return head_gradient(z.float(), y, w, b)
    gw, gb = head_gradient_sums(z.float(), y, w, b)
    return shard.all_reduce_(torch.cat([gw.reshape(-1), gb])) / n


@torch.no_grad()
def compute_feature_cache(backbone: Backbone, split: Split, resolution: int, crop: int, aug: AugmentConfig,
                          views: int, generator: torch.Generator, device: torch.device, autocast,
                          batch: int = 500, progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 features of ``views`` augmented views of every image of ``split`` (view-major) and their labels."""
    from tqdm.auto import tqdm

    n = len(split)
    out = torch.empty(views * n, backbone.feature_dim, dtype=torch.float16)
    distinct = 1 if aug.kind == "none" else views  # unaugmented views are all the same: compute one, copy it
    chunks = [(v, s) for v in range(distinct) for s in range(0, n, batch)]
    with backbone.bulk_inference(distinct * n):
        for v, start in tqdm(chunks, desc="real features", disable=not progress, file=sys.stderr,
                             dynamic_ncols=True):
            idx = torch.arange(start, min(start + batch, n))
            x = split.load(idx, resolution, device)
            with autocast:
                z = backbone.features(augment(x, crop, aug, generator))
            out[v * n + start: v * n + start + len(idx)] = z.float().cpu().half()
    out[distinct * n:] = out[:n].repeat(views - distinct, 1)
    return out, split.labels.repeat(views)
