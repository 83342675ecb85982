"""Artifacts on disk: safetensors + JSON only (nothing is ever unpickled), written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from lgm.errors import LgmError

ARTIFACT_FORMAT = 1


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    # Again here: some writers (safetensors) recreate the file with mode 0600.
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = _atomic_target(path)
    try:
        tmp.write_text(text)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """save_file to a temporary file in the same directory, then rename over ``path``."""
    tmp = _atomic_target(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise LgmError(f"cannot read {path}: {e}") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LgmError(f"cannot read {path}: {e}") from None


@dataclass
class DistilledSet:
    """Images in [0, 1] with labels, class names and provenance: what evaluation consumes.

    Distilled sets and baseline selections share this one format.
    """

    images: torch.Tensor  # N x C x H x W float32 in [0, 1]
    labels: torch.Tensor  # N int64, class-major
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.shape != (self.images.shape[0],):
            raise LgmError(f"images {tuple(self.images.shape)} and labels {tuple(self.labels.shape)} do not match")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` (``path`` without suffix)."""
        base = Path(path).with_suffix("")
        meta = {**self.meta, "class_names": self.class_names, "format": ARTIFACT_FORMAT,
                "num_images": int(self.images.shape[0]), "image_shape": list(self.images.shape[1:])}
        atomic_save_tensors(base.with_suffix(".safetensors"),
                            {"images": self.images.float(), "labels": self.labels.long()})
        atomic_write_json(base.with_suffix(".json"), meta)
        return base.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "DistilledSet":
        """Load from a run directory, ``X.safetensors`` or ``X.json``."""
        p = Path(path)
        if p.is_dir():
            p = p / "distilled"
        base = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
        tensors_path, json_path = base.with_suffix(".safetensors"), base.with_suffix(".json")
        for needed in (tensors_path, json_path):
            if not needed.is_file():
                raise LgmError(f"artifact file {needed} is missing (an artifact is a .safetensors + .json pair)")
        tensors = load_tensors(tensors_path)
        meta = read_json(json_path)
        if "images" not in tensors or "labels" not in tensors:
            raise LgmError(f"{tensors_path} lacks 'images'/'labels' tensors")
        class_names = meta.pop("class_names", None)
        if not isinstance(class_names, list):
            raise LgmError(f"{json_path} lacks the class_names list")
        return cls(tensors["images"], tensors["labels"], class_names, meta)
