"""Run directories: config, metrics, atomic checkpoints, and graceful stops.

Layout of a run directory::

    config.json                resolved DistillConfig (all defaults spelled out)
    metrics.jsonl              one line per step: step, loss, levels, seconds
    checkpoint.safetensors     synthetic parameters, Adam state, generator states
    checkpoint.json            human-readable sidecar (the safetensors metadata is authoritative)
    distilled.safetensors/.json  the result, once finished
    grid.png
    snapshots/step_NNNNNNN.safetensors  uint8 images every --snapshot-every steps (optional)
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch

from lgm.artifacts import atomic_save_tensors, atomic_write_json, load_tensors, read_json
from lgm.config import DistillConfig, config_differences
from lgm.errors import LgmError
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
    CHECKPOINT_SIDECAR = "checkpoint.json"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._metrics: TextIO | None = None

    def prepare(self, cfg: DistillConfig) -> None:
        """Create the directory, or check that an existing one holds the same run."""
        self.check(cfg)
        self.create(cfg)

    def check(self, cfg: DistillConfig) -> None:
        """Refuse a directory that holds another run or other files; writes nothing."""
        config_path = self.path / self.CONFIG
        if config_path.is_file():
            stored = DistillConfig.from_dict(read_json(config_path))
            diffs = config_differences(stored.semantic(), cfg.semantic())
            if diffs:
                raise LgmError(
                    f"{self.path} holds a run with a different configuration; refusing to mix them.\n  "
                    + "\n  ".join(diffs) + "\nUse another --out, or delete the directory to start over."
                )
        elif self.path.exists() and any(self.path.iterdir()):
            raise LgmError(f"{self.path} exists, is not empty and holds no {self.CONFIG}; choose another --out")

    def create(self, cfg: DistillConfig) -> None:
        """Write the directory and its config.json: only once the run's inputs have passed their checks."""
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path / self.CONFIG, cfg.to_dict())

    def finished(self) -> bool:
        return (self.path / "distilled.safetensors").is_file() and (self.path / "distilled.json").is_file()

    def has_checkpoint(self) -> bool:
        return (self.path / self.CHECKPOINT).is_file()

    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        if self._metrics is not None:
            self._metrics.flush()
        # The metadata inside the safetensors file is the source of truth: the
        # pair (tensors, metadata) is replaced by one atomic rename.
        atomic_save_tensors(self.path / self.CHECKPOINT, ckpt.tensors(), metadata={"lgm": json.dumps(ckpt.meta)})
        atomic_write_json(self.path / self.CHECKPOINT_SIDECAR, ckpt.meta)

    def load_checkpoint(self) -> Checkpoint:
        from safetensors import safe_open

        path = self.path / self.CHECKPOINT
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads(f.metadata()["lgm"])
        except Exception as e:
            raise LgmError(f"checkpoint {path} is unreadable ({e}); delete it to restart the run") from None
        return Checkpoint.from_tensors(load_tensors(path), meta)

    def open_metrics(self, keep_before: int) -> None:
        """Open metrics.jsonl for appending, dropping lines of steps the checkpoint does not cover."""
        path = self.path / self.METRICS
        kept = []
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] < keep_before:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError, TypeError):
                    break  # a torn last line from a killed run
        path.write_text("".join(line + "\n" for line in kept))
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
        path = self.path / self.METRICS
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
