"""Features on disk, keyed by everything that determines them.

Evaluating many artifacts on one backbone recomputes the same test and
validation features again and again; they are stored once as safetensors
under ``$LGM_CACHE_DIR`` (default ``~/.cache/lgm``) in ``features/<hash>``.
The key (backbone, its weights, normalization, dataset, split and a fingerprint of its images, selected rows,
transform, lgm's feature version) is written into the file's metadata and
checked on every read, so a hash collision or a hand-copied file can never
serve the wrong features.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from lgm.artifacts import atomic_save_tensors
from lgm.backbones import Backbone
from lgm.errors import LgmError

CACHE_ENV = "LGM_CACHE_DIR"
# Bump when the way features are computed changes (invalidates every stored entry).
FEATURE_VERSION = 1


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lgm")


def backbone_identity(backbone: Backbone) -> dict[str, Any]:
    """What makes two backbones' features equal: name, weights, normalization."""
    weights = getattr(backbone, "weights_id", None)
    return {"backbone": backbone.name, "random_init": bool(backbone.random_init),
            "weights": weights if weights is not None else "default",
            "normalization": getattr(backbone, "normalization", "native")}


def index_digest(index: torch.Tensor | None) -> str:
    if index is None:
        return "all"
    return hashlib.sha256(index.to(torch.int64).cpu().numpy().tobytes()).hexdigest()[:16]


def key_hash(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


# A temporary whose writer's pid is not alive here is removed once untouched for DEAD_WRITER_S (a writer on
# another machine sharing the directory looks dead to the pid check, but a live write keeps its file's mtime
# moving); one that names no pid (written before pids were named) once untouched for UNKNOWN_WRITER_S.
DEAD_WRITER_S = 60.0
UNKNOWN_WRITER_S = 3600.0


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the temporaries (``.NAME.PID.XXXX.tmp``) that killed writers left in ``root`` and its
    ``.partial`` folders. Returns what was removed."""
    import time

    if not root.is_dir():
        return []
    removed, now = [], time.time()
    folders = [root] + [d for d in root.iterdir() if d.is_dir() and d.suffix == ".partial"]
    for folder in folders:
        for p in folder.iterdir():
            if not (p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()):
                continue
            parts = p.name.split(".")
            pid = int(parts[-3]) if len(parts) >= 4 and parts[-3].isdigit() else None
            try:
                if pid is not None and _alive(pid):
                    continue
                if now - p.stat().st_mtime < (UNKNOWN_WRITER_S if pid is None else DEAD_WRITER_S):
                    continue
                p.unlink()
            except OSError:  # gone meanwhile, or not ours to delete
                continue
            removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class FeatureStore:
    """Get-or-compute for feature tensors; ``enabled=False`` always computes (nothing written)."""

    def __init__(self, cache_dir: str | Path | None = None, enabled: bool = True) -> None:
        self.root = cache_root(cache_dir) / "features"
        self.enabled = enabled
        self._swept = False

    def _sweep(self) -> None:
        """Once per store, before its first write: remove what killed writers left behind."""
        if not self._swept:
            self._swept = True
            for p in remove_stale_temporaries(self.root):
                print(f"lgm: removed {p}, left by an interrupted feature-store write", file=sys.stderr, flush=True)

    def path(self, key: dict[str, Any]) -> Path:
        return self.root / f"{key_hash(key)}.safetensors"

    def get(self, key: dict[str, Any], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        key = _stored_key(key)
        if not self.enabled:
            return _finite(compute(), key)
        path = self.path(key)
        cached = self._read(path, key)
        if cached is not None:
            return cached
        feats = _finite(compute(), key)
        self._sweep()
        _write(path, feats, key)
        return feats

    def get_rows(self, key: dict[str, Any], rows: int, compute: Callable[[int, int], torch.Tensor],
                 chunk: int = 5000, batch: int = 500, desc: str = "features",
                 progress: bool | None = None) -> torch.Tensor:
        """Like :meth:`get` for ``rows`` x f features computed ``batch`` rows at a time by ``compute(start, stop)``.

        Finished chunks of ``chunk`` rows are kept beside the entry (``<hash>.partial/``) until the whole
        tensor is stored, so a killed pass over a large split resumes at its last finished chunk. The stored
        entry is the same file :meth:`get` writes for the same key, and the rows are computed in the same
        batches whatever the chunking (``chunk`` is rounded to a multiple of ``batch``).
        """
        from tqdm.auto import tqdm

        key = _stored_key(key)
        path = self.path(key)
        cached = self._read(path, key, rows) if self.enabled else None
        if cached is not None:
            return cached
        chunk = max(batch, chunk // batch * batch)
        partial = path.with_suffix(".partial")
        parts: list[torch.Tensor] = []
        bar = tqdm(total=rows, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                   disable=not (sys.stderr.isatty() if progress is None else progress))
        with bar:
            for start in range(0, rows, chunk):
                stop = min(start + chunk, rows)
                part_key = {**key, "rows": [start, stop]}
                part_path = partial / f"{start:010d}-{stop:010d}.safetensors"
                part = self._read(part_path, part_key, stop - start) if self.enabled else None
                if part is None:
                    pieces = []
                    for b in range(start, stop, batch):
                        pieces.append(compute(b, min(b + batch, stop)))
                        bar.update(pieces[-1].shape[0])
                    part = _finite(torch.cat(pieces), key)
                    if self.enabled:
                        self._sweep()
                        _write(part_path, part, part_key)
                else:
                    bar.update(stop - start)
                parts.append(part)
        feats = torch.cat(parts) if parts else compute(0, 0)
        if self.enabled:
            self._sweep()
            _write(path, feats, key)
            shutil.rmtree(partial, ignore_errors=True)
        return feats

    @staticmethod
    def _read(path: Path, key: dict[str, Any], rows: int | None = None) -> torch.Tensor | None:
        """The features stored at ``path`` when its metadata holds exactly ``key``, else None.

        An entry that fails its checksum (or cannot be parsed, or has the wrong number of rows) is
        recomputed and replaced, with a warning naming it.
        """
        if not path.is_file():
            return None
        from lgm.artifacts import load_tensors_and_metadata

        try:
            tensors, metadata = load_tensors_and_metadata(path)
            if json.loads(metadata.get("key", "null")) != key:
                return None
            feats = tensors.get("features")
            if feats is None or (rows is not None and (feats.dim() != 2 or feats.shape[0] != rows)):
                raise LgmError(f"{path} holds {None if feats is None else tuple(feats.shape)}, expected {rows} rows")
        except (LgmError, ValueError) as e:
            print(f"lgm: warning: feature-store entry {path} is unusable ({e}); recomputing it",
                  file=sys.stderr, flush=True)
            return None
        return feats


def _stored_key(key: dict[str, Any]) -> dict[str, Any]:
    # As stored (JSON): tuples become lists, so the comparison on read is like for like.
    return json.loads(json.dumps({**key, "feature_version": FEATURE_VERSION}, sort_keys=True))


def _write(path: Path, feats: torch.Tensor, key: dict[str, Any]) -> None:
    atomic_save_tensors(path, {"features": feats}, metadata={"key": json.dumps(key, sort_keys=True)})


def _finite(feats: torch.Tensor, key: dict[str, Any]) -> torch.Tensor:
    if not torch.isfinite(feats).all():
        raise LgmError(f"the backbone produced NaN or infinite features for {key}; nothing was cached")
    return feats
