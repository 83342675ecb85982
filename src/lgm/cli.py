"""The `lgm` command: thin wrappers that build configs and call the library."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated

import tyro

from lgm.config import DistillConfig
from lgm.demo import DemoConfig
from lgm.errors import LgmError


@dataclass(frozen=True)
class DistillCommand:
    """Distill a dataset into ipc synthetic images per class for a frozen backbone.

    Re-running the same command on the same --out resumes from the last
    checkpoint; a finished run is not redone.
    """

    config: Annotated[DistillConfig, tyro.conf.OmitArgPrefixes]
    out: str
    """Run directory (config.json, metrics.jsonl, checkpoint, distilled.safetensors/.json, grid.png)."""


@dataclass(frozen=True)
class ListBackbones:
    """List the registered backbones."""


@dataclass(frozen=True)
class ListDatasets:
    """List the registered datasets."""


def _run(cmd) -> int:
    if isinstance(cmd, DistillCommand):
        from lgm.distillation import distill

        distill(cmd.config.dataset, cmd.config.backbone, cmd.config, out=cmd.out)
    elif isinstance(cmd, DemoConfig):
        from lgm.demo import run_demo

        run_demo(cmd)
    elif isinstance(cmd, ListBackbones):
        from lgm.backbones import list_backbones, weights_on_disk

        row = "{:22s} {:>5s} {:>5s}  {:7s}  {:40s}  {}"
        print(row.format("name", "dim", "input", "on disk", "normalization (native)", "weights from"))
        for info in list_backbones():
            on_disk = "yes" if weights_on_disk(info.name) else "no"
            print(row.format(info.name, str(info.feature_dim), str(info.input_size or "any"), on_disk,
                             info.normalization, info.weights))
        print("timm:<model_name>      any timm model: pooled pre-logits, timm's mean/std and input size, "
              "weights from the HF cache or --weights")
        print("Options: --weights PATH, --random-init; Python: load_backbone(name, normalization='imagenet', "
              "input_size=..., grad_checkpointing=True)")
    elif isinstance(cmd, ListDatasets):
        from lgm.data import DATASETS

        for name in DATASETS.names():
            print(name)
    return 0


def main(argv: list[str] | None = None) -> int:
    cmd = tyro.extras.subcommand_cli_from_dict(
        {
            "distill": DistillCommand,
            "demo": DemoConfig,
            "backbones": ListBackbones,
            "datasets": ListDatasets,
        },
        prog="lgm",
        description="Linear Gradient Matching: distill image datasets for linear probes on frozen backbones.",
        args=argv,
    )
    try:
        return _run(cmd)
    except LgmError as e:
        print(f"lgm: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
