"""Run directories: config, metrics, atomic checkpoints, and graceful stops.

Layout of a run directory::

    config.json                resolved DistillConfig (all defaults spelled out)
    metrics.jsonl              one line per step: step, loss, levels, seconds
    checkpoint.safetensors     synthetic parameters, Adam state, generator states (checksummed)
    checkpoint.prev.safetensors  the checkpoint before it, kept as a fallback should the newest be corrupt
    checkpoint.json            human-readable sidecar (the safetensors metadata is authoritative)
    distilled.safetensors/.json  the result, once finished
    grid.png
    snapshots/step_NNNNNNN.safetensors  uint8 images every --snapshot-every steps (optional)
    .lgm.lock                  advisory lock of the process working on the run (``lgm.locks``)

``metrics.jsonl`` is append-only: a resumed run cuts it back to the steps its
checkpoint covers with one truncate (or, when a line in the middle is torn, one
atomic replacement), never by rewriting it in place.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from lgm.artifacts import (atomic_save_tensors, atomic_write_json, atomic_write_text, load_tensors,
                           load_tensors_and_metadata, read_json_object)
from lgm.config import DistillConfig, config_differences
from lgm.errors import CorruptFileError, LgmError
from lgm.locks import LOCK_FILE, exclusive
from lgm.version import __version__


class Interrupted(LgmError):
    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class StopSignals:
    """Turns SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signal = signum

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def interrupted(self, step: int, total: int, path: Path | None) -> Interrupted:
        name = signal.Signals(self.signal).name
        where = f"; checkpoint written to {path}, re-run the same command to resume" if path else ""
        return Interrupted(f"stopped by {name} at step {step}/{total}{where}", self.signal)


@dataclass
class Checkpoint:
    step: int
    seconds: float
    synthetic: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    generators: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @classmethod
    def capture(cls, step, seconds, syn, optimizer: torch.optim.Optimizer, gens, cfg: DistillConfig) -> "Checkpoint":
        params = list(syn.parameters())
        opt_tensors = {}
        for i, p in enumerate(params):
            for key, value in optimizer.state.get(p, {}).items():
                opt_tensors[f"{i}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        meta = {"step": step, "seconds": seconds, "levels": syn.levels, "config_hash": cfg.hash(),
                "lgm_version": __version__, "num_params": len(params)}
        return cls(step, seconds, syn.state_tensors(), opt_tensors, gens.state_tensors(), meta)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"syn.{k}": v for k, v in self.synthetic.items()}
        out.update({f"opt.{k}": v for k, v in self.optimizer.items()})
        out.update({f"gen.{k}": v for k, v in self.generators.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "Checkpoint":
        def part(prefix):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        return cls(int(meta["step"]), float(meta["seconds"]), part("syn."), part("opt."), part("gen."), meta)

    def load_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if len(params) != int(self.meta["num_params"]):
            raise LgmError(f"checkpoint holds optimizer state for {self.meta['num_params']} tensors, "
                           f"the synthetic set has {len(params)}")
        for name, value in self.optimizer.items():
            i, key = name.split(".", 1)
            p = params[int(i)]
            optimizer.state[p][key] = value.to(p.device) if key != "step" else value.cpu()


SNAPSHOT_MAX_SIDE = 128
"""Snapshots larger than this are downscaled (antialiased): they are for looking at, not for resuming."""


def snapshot_pixels(images: torch.Tensor, max_side: int = SNAPSHOT_MAX_SIDE) -> torch.Tensor:
    """N x C x H x W in [0, 1] -> uint8, downscaled so that the longer side is at most ``max_side``."""
    x = images.detach().float().cpu()
    side = max(x.shape[-2:])
    if side > max_side:
        h, w = (round(d * max_side / side) for d in x.shape[-2:])
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def read_snapshots(run: Path) -> list[tuple[int, torch.Tensor]]:
    """(step, uint8 images) of every snapshot of a run directory, in step order."""
    folder = Path(run) / RunDir.SNAPSHOTS
    out = []
    for path in sorted(folder.glob("step_*.safetensors")) if folder.is_dir() else []:
        tensors = load_tensors(path)
        if "images" not in tensors or tensors["images"].dtype != torch.uint8:
            raise LgmError(f"snapshot {path} lacks a uint8 'images' tensor")
        try:
            step = int(path.stem.split("_", 1)[1])
        except ValueError:
            raise LgmError(f"snapshot file name {path.name} does not hold a step number") from None
        out.append((step, tensors["images"]))
    return sorted(out, key=lambda t: t[0])


class RunDir:
    CONFIG = "config.json"
    SNAPSHOTS = "snapshots"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "checkpoint.safetensors"
    PREVIOUS_CHECKPOINT = "checkpoint.prev.safetensors"
    CHECKPOINT_SIDECAR = "checkpoint.json"
    # Files this run writes atomically (through a ``.NAME.*.tmp`` temporary) in its directory: the
    # temporaries of these that an interrupted run left behind are removed (others may belong to
    # another command, e.g. `lgm eval` writing eval.json while the run works).
    OWN_FILES = ("config.json", "metrics.jsonl", "checkpoint.safetensors", "checkpoint.prev.safetensors",
                 "checkpoint.json", "distilled.safetensors",
                 "distilled.json", "grid.png", "real_side.json", "real_features*.safetensors")

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._metrics: TextIO | None = None

    def locked(self):
        """Hold this run directory for the ``with`` block; a second process is refused at once."""
        return exclusive(self.path, "run directory", "wait for it to finish (or stop it), or use another --out")

    def check(self, cfg: DistillConfig) -> None:
        """Refuse a directory that holds another run or other files; writes nothing."""
        config_path = self.path / self.CONFIG
        if config_path.is_file():
            raw = read_json_object(config_path, "a run configuration")
            try:
                stored = DistillConfig.from_dict(raw).semantic()
            except LgmError as e:
                raise LgmError(f"{config_path}: {e}; restore it, or use another --out") from None
            except (TypeError, ValueError, AttributeError, KeyError) as e:
                raise LgmError(f"{config_path} is not a configuration lgm wrote ({type(e).__name__}: {e}); "
                               "restore it, or use another --out") from None
            diffs = config_differences(stored, cfg.semantic())
            if diffs:
                raise LgmError(
                    f"{self.path} holds a run with a different configuration; refusing to mix them.\n  "
                    + "\n  ".join(diffs) + "\nUse another --out, or delete the directory to start over."
                )
        elif self.path.exists() and any(p.name != LOCK_FILE and not self._own_temporary(p)
                                        for p in self.path.iterdir()):
            raise LgmError(f"{self.path} exists, is not empty and holds no {self.CONFIG}; choose another --out")

    def create(self, cfg: DistillConfig) -> None:
        """Write the directory and its config.json: only once the run's inputs have passed their checks."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.remove_stale_temporaries()
        atomic_write_json(self.path / self.CONFIG, cfg.to_dict())

    def _own_temporary(self, p: Path) -> bool:
        import fnmatch

        return any(fnmatch.fnmatchcase(p.name, f".{name}.*.tmp") for name in self.OWN_FILES)

    def remove_stale_temporaries(self) -> list[Path]:
        """Delete what interrupted atomic writes of this run left (call with the run's lock held)."""
        folders = [self.path, self.path / self.SNAPSHOTS]
        stale = [p for d in folders if d.is_dir() for p in d.iterdir()
                 if p.is_file() and (self._own_temporary(p) or d.name == self.SNAPSHOTS and p.suffix == ".tmp")]
        for p in stale:
            p.unlink(missing_ok=True)
        return stale

    def finished(self) -> bool:
        return (self.path / "distilled.safetensors").is_file() and (self.path / "distilled.json").is_file()

    def has_checkpoint(self) -> bool:
        return (self.path / self.CHECKPOINT).is_file() or (self.path / self.PREVIOUS_CHECKPOINT).is_file()

    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        if self._metrics is not None:
            self._metrics.flush()
        current, previous = self.path / self.CHECKPOINT, self.path / self.PREVIOUS_CHECKPOINT

        def keep_previous() -> None:
            # Reached once the new checkpoint is written and verified: the one it replaces stays as the fallback.
            if current.is_file():
                os.replace(current, previous)

        # The metadata inside the safetensors file is the source of truth: the
        # pair (tensors, metadata) is replaced by one atomic rename.
        atomic_save_tensors(current, ckpt.tensors(), metadata={"lgm": json.dumps(ckpt.meta)}, verify=True,
                            before_commit=keep_previous)
        atomic_write_json(self.path / self.CHECKPOINT_SIDECAR, ckpt.meta)

    def load_checkpoint(self) -> Checkpoint:
        """The newest readable checkpoint; a corrupt newest one falls back to the one before it (with a warning)."""
        errors = []
        for name in (self.CHECKPOINT, self.PREVIOUS_CHECKPOINT):
            path = self.path / name
            if not path.is_file():
                continue
            try:
                ckpt = self._read_checkpoint(path)
            except LgmError as e:
                errors.append(str(e))
                continue
            if errors:
                print(f"lgm: warning: {errors[0]}; resuming from the previous checkpoint {path} (step {ckpt.step})",
                      file=sys.stderr, flush=True)
            return ckpt
        if not errors:
            raise LgmError(f"{self.path} holds no checkpoint")
        raise CorruptFileError("; ".join(errors) + "; no readable checkpoint is left: delete "
                               f"{self.path / self.CHECKPOINT} (and {self.PREVIOUS_CHECKPOINT}) to restart the run")

    @staticmethod
    def _read_checkpoint(path: Path) -> Checkpoint:
        tensors, metadata = load_tensors_and_metadata(path)
        try:
            meta = json.loads(metadata["lgm"])
            ckpt = Checkpoint.from_tensors(tensors, meta)
            int(meta["num_params"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e})") from None
        if ckpt.step < 0 or not ckpt.seconds >= 0:
            raise CorruptFileError(f"checkpoint {path} records step {ckpt.step} and {ckpt.seconds} s")
        return ckpt

    def open_metrics(self, keep_before: int) -> None:
        """Open metrics.jsonl for appending, keeping every valid line of the steps the checkpoint covers.

        The common case (the file is those lines, then lines of later steps or a torn tail) is one
        ``truncate``, atomic on every local filesystem; only a damaged line in the middle makes the file
        be replaced, through a temporary and a rename. A kill at any point leaves either the old file or
        the new one.
        """
        path = self.path / self.METRICS
        if path.is_file():
            data = path.read_bytes()
            kept, prefix_end, in_prefix, pos = [], 0, True, 0
            for raw in data.splitlines(keepends=True):
                pos += len(raw)
                row = _metrics_row(raw)
                if row is None or row["step"] >= keep_before:
                    in_prefix = False  # what is kept after this line is no longer a prefix of the file
                    continue
                kept.append(raw.rstrip(b"\r\n") + b"\n")
                if in_prefix:
                    prefix_end = pos
            kept_bytes, prefix = b"".join(kept), data[:prefix_end]
            if kept_bytes in (prefix, prefix + b"\n"):
                if len(data) > prefix_end:
                    os.truncate(path, prefix_end)
                if kept_bytes != prefix:  # a valid last line that lost its newline
                    with open(path, "ab") as f:
                        f.write(b"\n")
            else:
                atomic_write_text(path, kept_bytes.decode())
        self._metrics = open(path, "a")

    def log_metrics(self, row: dict[str, Any]) -> None:
        if self._metrics is not None:
            self._metrics.write(json.dumps(row) + "\n")

    def close_metrics(self) -> None:
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None

    def save_snapshot(self, step: int, images: torch.Tensor) -> Path:
        """Write the rendered images of ``step`` as a small uint8 snapshot (atomic; overwrites on resume)."""
        path = self.path / self.SNAPSHOTS / f"step_{step:07d}.safetensors"
        atomic_save_tensors(path, {"images": snapshot_pixels(images)}, metadata={"step": str(step)})
        return path

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every valid line of metrics.jsonl (a torn or damaged line, as a killed run leaves, is skipped)."""
        path = self.path / self.METRICS
        if not path.is_file():
            return []
        return [row for row in map(_metrics_row, path.read_bytes().splitlines()) if row is not None]


def _metrics_row(raw: bytes) -> dict[str, Any] | None:
    """A metrics line as a dict with an integer step, or None for a torn or foreign line."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(row, dict) or not isinstance(row.get("step"), int) or isinstance(row["step"], bool):
        return None
    return row
