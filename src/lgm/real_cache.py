"""Standalone, resumable cache of real-image features (``lgm cache-features``).

A distillation step needs the head gradient of a large real batch; computing
it live costs one backbone pass per real view and step. This module stores
the features of ``views`` augmented views of every (or ``per_class`` selected)
training image once, as an fp16 memory map that distillation indexes
directly (no decoding, no backbone pass).

Layout of a cache directory (default ``$LGM_CACHE_DIR/real/<id>``, where
``$LGM_CACHE_DIR`` defaults to ``~/.cache/lgm``, as for ``lgm.feature_store``)::

    meta.json      key (what the features are), shape, chunks done, complete flag
    features.f16   rows x dim float16, row = view * n_images + image (view-major)
    labels.npy     int64 label of each row
    indices.npy    int64 training-split index of each cached image

The build is written chunk by chunk: after each chunk the memory map is
flushed, then ``meta.json`` is replaced atomically with the new progress
counter, so a build killed at any point resumes from the last recorded chunk
(killed before its first ``meta.json``, it starts over). A build holds the
directory's lock (``lgm.locks``): a second build of the same cache is refused.
``meta.json`` records the SHA-256 of the labels and indices, and of the
features once complete; opening a cache verifies them.
Every chunk's augmentation draws come from a generator seeded by
(seed, chunk index), never from a running stream, so a resumed build equals
an uninterrupted one exactly. Reading checks the key: a cache built for
another backbone, weights, dataset, resolution or augmentation is refused with
the list of differing fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lgm.artifacts import atomic_write_json, read_json_object
from lgm.augment import augment, block_seed
from lgm.backbones import Backbone
from lgm.data import ImageDataset, stratified_indices
from lgm.digests import file_sha256, weights_sha256
from lgm.errors import CorruptFileError, LgmError
from lgm.feature_store import cache_root, key_hash
from lgm.locks import LOCK_FILE, exclusive
from lgm.version import __version__
from lgm.command_configs import CacheFeaturesConfig  # noqa: F401  (re-exported)

# Bump when the layout or the way cached features are computed changes.
REAL_CACHE_FORMAT = 1
META = "meta.json"
FEATURES = "features.f16"
LABELS = "labels.npy"
INDICES = "indices.npy"
# Fields of the key that only choose how much is cached (not what a row means): a distillation run may
# use any cache that agrees on every other field.
SIZE_FIELDS = ("views", "per_class", "seed", "num_rows")


def weights_identity(weights: str | None, random_init: bool) -> str:
    """What the backbone's weights are: random, the installed default, or a local file by content."""
    if random_init:
        return "random-init"
    if weights is None:
        return "default"
    path = Path(weights)
    if not path.exists():
        return f"file:{path}"
    return f"sha256:{weights_sha256(path)[:16]}"


def cache_key(cfg: CacheFeaturesConfig, ds: ImageDataset, backbone: Backbone, indices: torch.Tensor) -> dict[str, Any]:
    """Everything that determines the cached features (and what their rows are)."""
    labels = ds.train.labels.cpu().to(torch.int64).numpy()
    return {
        "format": REAL_CACHE_FORMAT,
        "backbone": backbone.name,
        "weights": weights_identity(cfg.weights, bool(backbone.random_init)),
        "normalization": backbone.normalization,
        "feature_dim": backbone.feature_dim,
        "dataset": ds.name,
        "split": "train",
        "train_images": int(len(labels)),
        "train_labels": hashlib.sha256(labels.tobytes()).hexdigest()[:16],
        "res": cfg.res,
        "crop": cfg.crop,
        # Without augmentation the crop and noise settings change nothing, so they stay out of the key.
        "augment": {"kind": "none"} if cfg.aug == "none" else dataclasses.asdict(cfg.augment_config()),
        "views": cfg.views,
        "per_class": cfg.per_class,
        "seed": cfg.seed,
        "num_rows": cfg.views * int(indices.numel()),
    }


def key_differences(stored: dict[str, Any], wanted: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    keys = sorted((set(stored) | set(wanted)) - set(ignore))
    return [f"{k}: cache has {stored.get(k)!r}, requested {wanted.get(k)!r}" for k in keys
            if stored.get(k) != wanted.get(k)]


def _normalize(key: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(key))  # tuples -> lists, as they come back from JSON


def select_indices(ds: ImageDataset, per_class: int, seed: int) -> torch.Tensor:
    if not per_class:
        return torch.arange(len(ds.train))
    picker = torch.Generator().manual_seed((seed << 8) | 5)
    return torch.sort(stratified_indices(ds.train.labels.cpu(), per_class, picker)).values


class RealFeatureCache:
    """A complete cache opened for reading: fp16 features (memory-mapped) and labels."""

    def __init__(self, path: Path, meta: dict[str, Any], features: torch.Tensor, labels: torch.Tensor) -> None:
        self.path, self.meta, self.features, self.labels = path, meta, features, labels

    @property
    def key(self) -> dict[str, Any]:
        return self.meta["key"]

    @property
    def id(self) -> str:
        return self.meta["id"]

    @classmethod
    def open(cls, path: str | Path, expected: dict[str, Any] | None = None,
             ignore: tuple[str, ...] = ()) -> "RealFeatureCache":
        """Open the cache at ``path``; with ``expected``, refuse it unless its key agrees (``ignore`` aside)."""
        path = Path(path)
        meta_path = path / META
        if not meta_path.is_file():
            raise LgmError(f"{path} is not a real-feature cache (no {META}); build one with `lgm cache-features`")
        meta = read_json_object(meta_path, "a real-feature cache description")
        if not isinstance(meta.get("key"), dict) or meta["key"].get("format") != REAL_CACHE_FORMAT:
            fmt = meta["key"].get("format") if isinstance(meta.get("key"), dict) else None
            raise LgmError(f"{path} holds a real-feature cache of format {fmt!r}; "
                           f"this lgm reads format {REAL_CACHE_FORMAT}: rebuild it with `lgm cache-features`")
        if expected is not None:
            diffs = key_differences(meta["key"], _normalize(expected), ignore)
            if diffs:
                raise LgmError(f"the real-feature cache {path} was built for other settings; refusing it:\n  "
                               + "\n  ".join(diffs))
        if not meta.get("complete"):
            raise LgmError(f"the real-feature cache {path} is incomplete ({meta.get('chunks_done')}/"
                           f"{meta.get('chunks_total')} chunks); re-run the same `lgm cache-features` command to "
                           "finish it")
        rows, dim = check_layout(path, meta)
        verify_files(path, meta, (FEATURES, LABELS))
        mm = np.memmap(path / FEATURES, dtype=np.float16, mode="c", shape=(rows, dim))
        labels = _load_int64(path / LABELS, rows)
        return cls(path, meta, torch.from_numpy(mm), labels)


def _int_field(meta: dict[str, Any], name: str, where: Path) -> int:
    value = meta.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise LgmError(f"{where / META}: {name} must be a positive integer, got {value!r}; rebuild the cache")
    return value


def check_layout(path: Path, meta: dict[str, Any]) -> tuple[int, int]:
    """(rows, dim) from meta.json, checked against its key and the size of features.f16 before any mapping."""
    rows, dim = _int_field(meta, "rows", path), _int_field(meta, "dim", path)
    key = meta["key"]
    if key.get("num_rows") != rows or key.get("feature_dim") != dim:
        raise LgmError(f"{path / META}: rows x dim {rows} x {dim} disagree with its key ({key.get('num_rows')} x "
                       f"{key.get('feature_dim')}); rebuild the cache")
    size = (path / FEATURES).stat().st_size if (path / FEATURES).is_file() else None
    if size != rows * dim * 2:
        raise CorruptFileError(f"{path / FEATURES} holds {size} bytes, {rows} x {dim} fp16 features need "
                               f"{rows * dim * 2} (truncated or replaced); delete {path} and re-run `lgm "
                               "cache-features`")
    return rows, dim


def verify_files(path: Path, meta: dict[str, Any], names: tuple[str, ...]) -> None:
    """Check the SHA-256 that meta.json records for each of ``names`` (caches built before checksums: none)."""
    digests = meta.get("sha256") if isinstance(meta.get("sha256"), dict) else {}
    for name in names:
        if name in digests and file_sha256(path / name) != digests[name]:
            raise CorruptFileError(f"{path / name} is corrupt: its content does not match the checksum in "
                                   f"{path / META}; delete {path} and re-run `lgm cache-features`")


def _load_int64(file: Path, rows: int) -> torch.Tensor:
    try:
        values = np.load(file, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CorruptFileError(f"cannot read {file}: {e}; delete its cache and re-run `lgm cache-features`") from None
    if values.dtype != np.int64 or values.shape != (rows,) or (rows and values.min() < 0):
        raise CorruptFileError(f"{file} holds {values.dtype} {values.shape}, expected {rows} non-negative int64 "
                               "labels; delete its cache and re-run `lgm cache-features`")
    return torch.from_numpy(values)


def _chunks(n: int, views: int, batch: int) -> list[tuple[int, int]]:
    return [(v, s) for v in range(views) for s in range(0, n, batch)]


@torch.no_grad()
def build_real_cache(cfg: CacheFeaturesConfig, ds: ImageDataset, backbone: Backbone, device: torch.device,
                     autocast, log=None, center_rows=None) -> RealFeatureCache:
    """Build (or resume, or just open) the cache for ``cfg``; returns it opened for reading.

    ``center_rows(indices)``, when given, returns the features of those training images' center view at
    ``cfg.res`` (the test transform, e.g. from the feature store). An unaugmented cache with ``res == crop``
    holds exactly those features, so it takes them instead of running the backbone again.
    """
    cfg.validate()
    if not (cfg.aug == "none" and cfg.res == cfg.crop):
        center_rows = None
    log = log or (lambda m: None)
    indices = select_indices(ds, cfg.per_class, cfg.seed)
    key = _normalize(cache_key(cfg, ds, backbone, indices))
    cid = key_hash(key)
    path = Path(cfg.out) if cfg.out else cache_root(cfg.cache_dir) / "real" / cid
    with exclusive(path, "real-feature cache", "wait for that build to finish, or use another --out"):
        return _build_locked(cfg, ds, backbone, device, autocast, log, indices, key, cid, path, center_rows)


# What a build writes in its directory: an interrupted build that left only these (no meta.json yet) restarts.
OWN_FILES = (FEATURES, LABELS, INDICES, LOCK_FILE)


def _rows_digest(mm: np.memmap, lo: int, hi: int) -> str:
    return hashlib.sha256(np.ascontiguousarray(mm[lo:hi]).tobytes()).hexdigest()[:16]


def _verified_chunks(mm: np.memmap, meta: dict[str, Any], chunks: list[tuple[int, int]], n: int, batch: int,
                     done: int) -> int:
    """How many of the ``done`` chunks of a partial build still hold what was written (their recorded digests);
    a build recorded before per-chunk digests is trusted as it is."""
    sums = meta.get("chunk_sha256")
    if not isinstance(sums, list):
        return done
    for c in range(done):
        v, s = chunks[c]
        if c >= len(sums) or _rows_digest(mm, v * n + s, v * n + min(s + batch, n)) != sums[c]:
            return c
    return done


def _own_file(p: Path) -> bool:
    return p.name in OWN_FILES or (p.name.startswith(f".{META}.") and p.name.endswith(".tmp"))


def _build_locked(cfg: CacheFeaturesConfig, ds: ImageDataset, backbone: Backbone, device: torch.device, autocast,
                  log, indices: torch.Tensor, key: dict[str, Any], cid: str, path: Path,
                  center_rows=None) -> RealFeatureCache:
    from tqdm.auto import tqdm

    meta_path = path / META
    n, dim = int(indices.numel()), backbone.feature_dim
    chunks = _chunks(n, cfg.views, cfg.batch)
    for p in path.iterdir():  # temporaries of meta.json writes that were interrupted (the lock is held)
        if p.name.startswith(f".{META}.") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
    meta = read_json_object(meta_path, "a real-feature cache description") if meta_path.is_file() else None
    if meta is not None:
        diffs = key_differences(meta.get("key") if isinstance(meta.get("key"), dict) else {}, key)
        if diffs:
            raise LgmError(f"{path} holds a real-feature cache built for other settings; refusing to mix them:\n  "
                           + "\n  ".join(diffs) + "\nUse another --out (or the default location), or delete it.")
        if meta.get("complete"):
            try:
                cache = RealFeatureCache.open(path, key)
            except CorruptFileError as e:
                log(f"{e}; rebuilding it")
                meta = None
            else:
                log(f"{path} already holds this cache (complete); nothing to do")
                return cache
    if meta is not None:
        if meta.get("chunk_rows") != cfg.batch:
            raise LgmError(f"{path} is a partial build with --batch {meta.get('chunk_rows')}; resume it with that "
                           f"--batch (got {cfg.batch})")
        start = meta.get("chunks_done")
        try:
            if not (isinstance(start, int) and 0 <= start <= len(chunks)):
                raise CorruptFileError(f"{meta_path}: chunks_done {start!r} is not in 0..{len(chunks)}")
            check_layout(path, meta)
            verify_files(path, meta, (LABELS, INDICES))
        except LgmError as e:
            log(f"the partial build in {path} is damaged ({e}); starting it over")
            meta = None
    if meta is not None:
        mm = np.memmap(path / FEATURES, dtype=np.float16, mode="r+", shape=(cfg.views * n, dim))
        good = _verified_chunks(mm, meta, chunks, n, cfg.batch, start)
        if good < start:
            log(f"chunk {good} of the partial build in {path} does not match its checksum in {META}; "
                f"recomputing from there")
            start = meta["chunks_done"] = good
            meta["chunk_sha256"] = meta["chunk_sha256"][:good]
        log(f"resuming the cache build in {path} at chunk {start}/{len(chunks)}")
    else:
        others = sorted(p.name for p in path.iterdir() if not _own_file(p) and p.name != META)
        if others:
            raise LgmError(f"{path} exists, is not empty and holds no {META} (it holds {', '.join(others[:5])}); "
                           "choose another --out")
        for name in (META, FEATURES, LABELS, INDICES):
            (path / name).unlink(missing_ok=True)  # what a build killed before its first meta.json left
        labels = ds.train.labels.cpu()[indices].to(torch.int64).repeat(cfg.views)
        np.save(path / INDICES, indices.to(torch.int64).numpy())
        np.save(path / LABELS, labels.numpy())
        mm = np.memmap(path / FEATURES, dtype=np.float16, mode="w+", shape=(cfg.views * n, dim))
        meta = {"id": cid, "key": key, "rows": cfg.views * n, "dim": dim, "dtype": "float16", "images": n,
                "chunk_rows": cfg.batch, "chunks_total": len(chunks), "chunks_done": 0, "chunk_sha256": [],
                "complete": False,
                "lgm_version": __version__, "device": str(device),
                "sha256": {name: file_sha256(path / name) for name in (LABELS, INDICES)}}
        atomic_write_json(meta_path, meta)
        start = 0
    aug = cfg.augment_config()
    split = ds.train
    gen = torch.Generator(device=device)
    # The scope's size is the whole build's (not what is left of it): a resumed build takes the same path.
    bulk_images = n * (1 if aug.kind == "none" else cfg.views)
    for c in tqdm(range(start, len(chunks)), initial=start, total=len(chunks), desc="real features",
                  disable=not cfg.progress, file=sys.stderr, dynamic_ncols=True):
        v, s = chunks[c]
        e = min(s + cfg.batch, n)
        if aug.kind == "none" and v > 0:
            mm[v * n + s: v * n + e] = mm[s:e]  # unaugmented views are all the same: view 0 is done, copy it
        else:
            if center_rows is not None:
                z = center_rows(indices[s:e]).float()
                if z.shape != (e - s, dim):
                    raise ValueError(f"center_rows gave {tuple(z.shape)} for {e - s} images of {dim} features")
            else:
                gen.manual_seed(block_seed(cfg.seed, c))
                x = split.load(indices[s:e], cfg.res, device)
                with autocast, backbone.bulk_inference(bulk_images):
                    z = backbone.features(augment(x, cfg.crop, aug, gen)).float()
            if not torch.isfinite(z).all():
                raise LgmError(f"the backbone produced NaN or infinite features (view {v}, images {s}..{e - 1}); "
                               f"the cache in {path} stays incomplete")
            mm[v * n + s: v * n + e] = z.cpu().half().numpy()
        mm.flush()
        if isinstance(meta.get("chunk_sha256"), list):  # partial builds of before per-chunk checksums: none
            meta["chunk_sha256"] = meta["chunk_sha256"][:c] + [_rows_digest(mm, v * n + s, v * n + e)]
        meta["chunks_done"] = c + 1
        atomic_write_json(meta_path, meta)
    del mm
    sums = meta.get("sha256") if isinstance(meta.get("sha256"), dict) else {}
    meta["sha256"] = {**sums, FEATURES: file_sha256(path / FEATURES)}
    meta["complete"] = True
    atomic_write_json(meta_path, meta)
    log(f"real-feature cache complete: {path} ({cfg.views * n} rows x {dim}, fp16)")
    return RealFeatureCache.open(path, key)


def find_real_cache(wanted: dict[str, Any], cache_dir: str | Path | None = None) -> Path | None:
    """The complete cache under ``<cache root>/real`` that agrees with ``wanted`` on everything but its size.

    Among several, the one with the most rows (then the lowest seed, then id) is taken, so the choice is a
    function of what is on disk.
    """
    wanted = _normalize(wanted)
    found = []
    root = cache_root(cache_dir) / "real"
    if not root.is_dir():
        return None
    for meta_path in sorted(root.glob(f"*/{META}")):
        try:
            meta = read_json_object(meta_path)
        except LgmError:
            continue
        key = meta.get("key")
        if meta.get("complete") and isinstance(key, dict) and not key_differences(key, wanted, SIZE_FIELDS):
            found.append((-int(meta.get("rows", 0)), int(key.get("seed", 0)), meta.get("id", ""), meta_path.parent))
    return min(found)[3] if found else None


def run_cache_features(cfg: CacheFeaturesConfig) -> RealFeatureCache:
    """The `lgm cache-features` command: build, resume or confirm the cache; prints its directory."""
    import contextlib

    from lgm.backbones import load_backbone
    from lgm.data import load_dataset
    from lgm.devices import resolve_device

    cfg.validate()
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.data_root, cfg.on_bad_image)
    bb = load_backbone(cfg.backbone, device, cfg.random_init, cfg.weights, normalization=cfg.normalization)
    amp_on = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if amp_on else contextlib.nullcontext()
    cache = build_real_cache(cfg, ds, bb, device, autocast,
                             log=lambda m: print(f"lgm cache-features: {m}", file=sys.stderr, flush=True))
    print(cache.path)
    return cache
