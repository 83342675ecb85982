"""lgm distill --head-source trajectory: heads from a real-feature probe's trajectory in image space."""

from __future__ import annotations

import json
import re

import pytest
import torch

import lgm.distillation
import lgm.rundir
from lgm.config import DistillConfig
from lgm.errors import UsageError
from lgm.matching import sample_head
from lgm.objectives import TrajectoryHeads, probe_trajectory, step_head
from lgm.rundir import RunDir
from tests.test_distill import StopAfter, run_tiny

TRAJ = {"real_features": "cached", "real_gradient": "full", "cache_per_class": 6, "cache_views": 1,
        "head_source": "trajectory", "trajectory_steps": (0, 3, 8)}


def test_new_keys_leave_old_hashes_alone_and_round_trip():
    base = DistillConfig("d", "b")
    assert "head_source" not in base.to_dict() and "trajectory_steps" not in base.to_dict()
    traj = DistillConfig("d", "b", real_features="cached", head_source="trajectory")
    assert traj.hash() != base.hash()
    other_steps = DistillConfig("d", "b", real_features="cached", head_source="trajectory", trajectory_steps=(0, 7))
    assert other_steps.hash() != traj.hash()
    # JSON gives lists: the loaded config is the same config, with the same hash.
    loaded = DistillConfig.from_dict(traj.to_dict())
    assert loaded.trajectory_steps == (0, 5, 20, 50, 100) and loaded.hash() == traj.hash()
    assert DistillConfig.from_dict(other_steps.to_dict()).hash() == other_steps.hash()


@pytest.mark.parametrize("kw, match", [
    ({"head_source": "trajectory", "real_features": "live"}, "real-features cached"),
    ({"head_source": "trajectory", "real_features": "cached", "trajectory_steps": (-1,)}, "trajectory-steps"),
    ({"head_source": "best"}, "head-source")])
def test_bad_head_source_settings_are_usage_errors(kw, match):
    with pytest.raises(UsageError, match=match):
        DistillConfig("d", "b", **kw).validate()


def test_step_head_draws_the_paper_head_or_a_snapshot():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    w, b = step_head(3, 8, g1, "normal001")
    w2, b2 = sample_head(3, 8, g2, "normal001")
    assert torch.equal(w, w2) and torch.equal(b, b2)
    x, y = torch.randn(60, 8, generator=torch.Generator().manual_seed(0)), torch.arange(60) % 3
    traj = TrajectoryHeads.train(x, y, 3, (0, 2, 9), seed=1)
    snaps = probe_trajectory(x, y, 3, (0, 2, 9), torch.Generator().manual_seed((1 << 8) | 7))
    assert traj.w.shape == (3, 3, 8) and all(torch.equal(traj.w[i], snaps[i][0]) for i in range(3))
    g = torch.Generator().manual_seed(0)
    drawn = {int(torch.nonzero((traj.w == step_head(3, 8, g, "normal001", traj)[0]).all(-1).all(-1))) for _ in range(40)}
    assert drawn == {0, 1, 2}


def test_trajectory_run_differs_from_the_random_head_run(fashion_root):
    plain = run_tiny(fashion_root, None, steps=4, **{k: v for k, v in TRAJ.items()
                                                       if k not in ("head_source", "trajectory_steps")})
    traj = run_tiny(fashion_root, None, steps=4, **TRAJ)
    assert not torch.equal(plain.images, traj.images)


def test_trajectory_run_refuses_a_live_real_side_at_once(fashion_root):
    with pytest.raises(UsageError, match="real-features cached"):
        run_tiny(fashion_root, None, steps=2, head_source="trajectory", real_features="live")


def test_resume_with_trajectory_heads_equals_uninterrupted(fashion_root, tmp_path, monkeypatch):
    reference = run_tiny(fashion_root, None, steps=17, **TRAJ)
    out = tmp_path / "run"
    StopAfter.n = 8
    monkeypatch.setattr(lgm.distillation, "StopSignals", StopAfter)
    with pytest.raises(lgm.rundir.Interrupted, match=r"stopped by SIGTERM at step (\d+)/17") as info:
        run_tiny(fashion_root, out, steps=17, **TRAJ)
    stopped = int(re.search(r"step (\d+)/17", str(info.value)).group(1))
    assert 5 < stopped < 17 and stopped % 5 != 0  # between periodic checkpoints
    monkeypatch.undo()
    resumed = run_tiny(fashion_root, out, steps=17, **TRAJ)
    assert torch.equal(resumed.images, reference.images)
    assert [r["step"] for r in RunDir(out).read_metrics()] == list(range(17))
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["head_source"] == "trajectory" and recorded["trajectory_steps"] == [0, 3, 8]


def test_chunked_trajectory_run_equals_unchunked(fashion_root):
    whole = run_tiny(fashion_root, None, steps=3, **TRAJ)
    chunked = run_tiny(fashion_root, None, steps=3, chunk=3, **TRAJ)
    torch.testing.assert_close(chunked.images, whole.images, rtol=0, atol=1e-5)
