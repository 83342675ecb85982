"""Artifacts on disk: safetensors + JSON only (nothing is ever unpickled), written atomically.

Every safetensors file lgm writes records a SHA-256 of its tensors (names, dtypes, shapes, bytes) in
its metadata (``lgm_sha256``); reading verifies it, so flipped, truncated or swapped content is an
error naming the file instead of a silently different result. Files written before checksums existed
hold none and load as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from lgm.errors import CorruptFileError, LgmError

ARTIFACT_FORMAT = 1
CHECKSUM_KEY = "lgm_sha256"
# Sanity limits on sizes read from artifact metadata (checked before anything is allocated from them).
MAX_SIDE = 4096


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors' names, dtypes, shapes and bytes, in name order (zero-copy for CPU tensors)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name, so that a shared directory (the feature store) can tell the
    # temporaries of dead writers from those of live ones (lgm.feature_store.remove_stale_temporaries).
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                        verify: bool = False, before_commit=None) -> str:
    """save_file to a temporary file in the same directory, then rename over ``path``; returns the checksum.

    With ``verify`` the temporary file is read back and checked before it replaces ``path`` (what was
    there stays until the new content is known good). ``before_commit`` is called just before the rename.
    """
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    digest = tensors_digest(cpu)
    tmp = _atomic_target(path)
    try:
        save_file(cpu, str(tmp), metadata={**(metadata or {}), CHECKSUM_KEY: digest})
        if verify:
            load_tensors(tmp)
        if before_commit is not None:
            before_commit()
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest


def load_tensors_and_metadata(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, its checksum verified when it records one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CorruptFileError(f"cannot read {path}: {e}") from None
    recorded = metadata.get(CHECKSUM_KEY)
    if recorded is not None and tensors_digest(tensors) != recorded:
        raise CorruptFileError(f"{path} is corrupt: its content does not match the checksum recorded when it "
                               "was written")
    return tensors, metadata


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors_and_metadata(path)[0]


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise LgmError(f"cannot read {path}: {e}") from None


def read_json_object(path: Path, what: str = "a file") -> dict[str, Any]:
    """``read_json`` for files that must hold a JSON object (every JSON file lgm writes does)."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise LgmError(f"{path} is not {what} lgm wrote: it holds a JSON {type(obj).__name__}, not an object; "
                       "restore it or delete it")
    return obj


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
        digest = atomic_save_tensors(base.with_suffix(".safetensors"),
                                     {"images": self.images.float(), "labels": self.labels.long()})
        # The JSON names the tensors it belongs with: a .safetensors of another artifact is refused on load.
        atomic_write_json(base.with_suffix(".json"), {**meta, "tensors_sha256": digest})
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
        meta = read_json_object(json_path, "an artifact description")
        tensors, stored = load_tensors_and_metadata(tensors_path)
        if "images" not in tensors or "labels" not in tensors:
            raise LgmError(f"{tensors_path} lacks 'images'/'labels' tensors")
        wanted = meta.pop("tensors_sha256", None)
        if wanted is not None and stored.get(CHECKSUM_KEY) != wanted:
            raise CorruptFileError(f"{tensors_path} does not hold the tensors {json_path} was written with "
                                   "(checksum differs): the pair was mixed up or one of them changed")
        class_names = meta.pop("class_names", None)
        if not isinstance(class_names, list) or not all(isinstance(n, str) for n in class_names):
            raise LgmError(f"{json_path} lacks the class_names list (of strings)")
        check_artifact_tensors(tensors["images"], tensors["labels"], len(class_names), meta, tensors_path)
        return cls(tensors["images"], tensors["labels"], class_names, meta)


def check_artifact_tensors(images: torch.Tensor, labels: torch.Tensor, num_classes: int, meta: dict[str, Any],
                           where: Path) -> None:
    """What an artifact's metadata says about its tensors must be true of them, and within sane sizes."""
    problems = []
    if not images.is_floating_point() or images.dim() != 4:
        problems.append(f"images must be a 4-d float tensor, got {images.dtype} {tuple(images.shape)}")
    elif max(images.shape[-2:]) > MAX_SIDE:
        problems.append(f"images of {tuple(images.shape[-2:])} px exceed the limit of {MAX_SIDE}")
    if labels.dtype != torch.int64 or labels.dim() != 1:
        problems.append(f"labels must be a 1-d int64 tensor, got {labels.dtype} {tuple(labels.shape)}")
    elif labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        problems.append(f"labels outside 0..{num_classes - 1}")
    if "num_images" in meta and meta["num_images"] != images.shape[0]:
        problems.append(f"num_images is {meta['num_images']!r} but the file holds {images.shape[0]} images")
    if "image_shape" in meta and meta["image_shape"] != list(images.shape[1:]):
        problems.append(f"image_shape is {meta['image_shape']!r} but the images are {list(images.shape[1:])}")
    config = meta.get("config", {})
    if not isinstance(config, dict):
        problems.append(f"config must be an object, got {type(config).__name__}")
    elif images.dim() == 4:
        for key in ("res", "crop"):
            value = config.get(key)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_SIDE:
                problems.append(f"config.{key} must be an integer in 1..{MAX_SIDE}, got {value!r}")
        res = config.get("res")
        if isinstance(res, int) and res != images.shape[-1]:
            problems.append(f"config.res is {res} but the images are {images.shape[-1]} px wide")
    if problems:
        raise LgmError(f"{where}: the artifact does not agree with its metadata:\n  " + "\n  ".join(problems))
