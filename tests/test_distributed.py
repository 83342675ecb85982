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


def torchrun_env() -> dict:
    """The environment of a torchrun child: this checkout's lgm first on the path, one thread per process."""
    src = str(Path(lgm.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def assert_same_params(run_one: Path, run_two: Path) -> None:
    """The synthetic parameters of two runs agree within 1e-5 relative, tensor by tensor."""
    one, two = synthetic_params(run_one), synthetic_params(run_two)
    assert one.keys() == two.keys() and len(one) > 1
    for k in one:
        rel = float((one[k] - two[k]).norm() / one[k].norm())
        assert rel < 1e-5, (k, rel)


@pytest.mark.parametrize("extra", [
    {"chunk": 4},  # live real side (shards of the real batch), chunked synthetic views
    # exact gradient over a per-run cache (rank 0 builds it, the other reads it); a second torchrun launch
    pytest.param({"real_features": "cached", "real_gradient": "full", "cache_per_class": 6}, marks=pytest.mark.slow),
])
def test_two_processes_equal_one(fashion_root, tmp_path, extra):
    settings = {**SETTINGS, **extra}
    distill("fashion-mnist", "toy_cnn", out=tmp_path / "one", data_root=str(fashion_root), **settings)
    env = torchrun_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lgm",
           "distill", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--out", str(tmp_path / "two"),
           "--data-root", str(fashion_root)] + as_args(settings)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_params(tmp_path / "one", tmp_path / "two")
    # Only rank 0 wrote (one metrics line per step).
    lines = (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == SETTINGS["steps"]
    assert json.loads((tmp_path / "two" / "distilled.json").read_text())["processes"] == 2


TORCHRUN_JOINT_SCRIPT = """\
import sys
sys.path.insert(0, {root!r})
from tests.test_joint import register_test_toys
register_test_toys()
from lgm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("extra", [
    # one backbone per step drawn by weight, live real side, chunked synthetic views
    {"backbone_schedule": "sample", "chunk": 4, "steps": 6},
    # both backbones every step, each with its per-run cache (rank 0 builds both), exact real gradient
    pytest.param({"real_features": "cached", "real_gradient": "full", "cache_per_class": 6, "chunk": 5},
                 marks=pytest.mark.slow),
])
def test_two_processes_equal_one_for_a_joint_run(fashion_root, tmp_path, extra):
    from tests.test_joint import TEST_TOYS, register_test_toys

    names = register_test_toys()
    try:
        settings = {**SETTINGS, **extra}
        weights = (2.0, 1.0)  # seed 0 draws both backbones within the first steps
        distill("fashion-mnist", names, out=tmp_path / "one", data_root=str(fashion_root), backbone_weights=weights,
                **settings)
    finally:
        from lgm.backbones import BACKBONES

        for name, *_ in TEST_TOYS:
            BACKBONES._items.pop(name, None)
    root = str(Path(__file__).resolve().parents[1])
    script = tmp_path / "lgm_with_toys.py"
    script.write_text(TORCHRUN_JOINT_SCRIPT.format(root=root))
    env = torchrun_env()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           "distill", "--dataset", "fashion-mnist", "--backbone", ",".join(names), "--backbone-weights",
           *map(str, weights), "--out", str(tmp_path / "two"), "--data-root", str(fashion_root)] + as_args(settings)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_params(tmp_path / "one", tmp_path / "two")
    rows_one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows_two) == settings["steps"]
    # The same backbone(s) every step (the schedule is drawn alike on every process), the same losses.
    assert [sorted(k for k in r if k.startswith("loss/")) for r in rows_one] == \
        [sorted(k for k in r if k.startswith("loss/")) for r in rows_two]
    assert [r["loss"] for r in rows_two] == pytest.approx([r["loss"] for r in rows_one], rel=1e-5)
    if extra.get("backbone_schedule") == "sample":
        assert len({next(k for k in r if k.startswith("loss/")) for r in rows_one}) == 2, "both backbones drawn"
    meta = json.loads((tmp_path / "two" / "distilled.json").read_text())
    assert meta["processes"] == 2 and meta["backbone"] == names
