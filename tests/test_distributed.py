"""torchrun with 2 CPU processes (gloo) gives the single-process result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lgm
from lgm.artifacts import load_tensors
from lgm.distillation import distill
from lgm.distributed import Shard

SETTINGS = dict(res=16, crop=14, augs=3, steps=5, checkpoint_every=100, progress=False, device="cpu")


def as_args(settings: dict) -> list[str]:
    args = []
    for k, v in settings.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + k.replace("_", "-"))
        else:
            args += [flag, str(v)]
    return args


def synthetic_params(run: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_tensors(run / "checkpoint.safetensors").items() if k.startswith("syn.")}


def test_shard_bounds_cover_everything_once():
    for n in (0, 1, 5, 7, 64):
        for world in (1, 2, 3):
            parts = [Shard(r, world).bounds(n) for r in range(world)]
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
            assert max(e - s for s, e in parts) - min(e - s for s, e in parts) <= 1


@pytest.mark.parametrize("extra", [
    {"chunk": 4},  # live real side (shards of the real batch), chunked synthetic views
    # exact gradient over a per-run cache (rank 0 builds it, the other reads it); a second torchrun launch
    pytest.param({"real_features": "cached", "real_gradient": "full", "cache_per_class": 6}, marks=pytest.mark.slow),
])
def test_two_processes_equal_one(fashion_root, tmp_path, extra):
    settings = {**SETTINGS, **extra}
    distill("fashion-mnist", "toy_cnn", out=tmp_path / "one", data_root=str(fashion_root), **settings)
    src = str(Path(lgm.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lgm",
           "distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--out", str(tmp_path / "two"),
           "--data-root", str(fashion_root)] + as_args(settings)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = synthetic_params(tmp_path / "one"), synthetic_params(tmp_path / "two")
    assert one.keys() == two.keys() and len(one) > 1
    for k in one:
        rel = float((one[k] - two[k]).norm() / one[k].norm())
        assert rel < 1e-5, (k, rel)
    # Only rank 0 wrote (one metrics line per step).
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == SETTINGS["steps"]
    assert json.loads((tmp_path / "two" / "distilled.json").read_text())["processes"] == 2
