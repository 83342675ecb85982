"""The feature-space ceiling on problems whose answer is known."""

import json

import pytest
import torch

from lgm.analysis.ceiling import feature_ceiling, heldout_meta_loss, optimize_features
from lgm.cli import main
from lgm.probe import ProbeConfig

PROBE = ProbeConfig(views=1, epochs=300, patience=0)


def clusters(n, centers, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % centers.shape[0]
    return centers[labels] + torch.randn(n, centers.shape[1], generator=g), labels


def test_separated_clusters_reach_the_full_feature_probe():
    centers = 6 * torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    real, y = clusters(2000, centers, 1)
    test, test_y = clusters(1000, centers, 2)
    r = feature_ceiling(real, y, 4, test, test_y, steps=300, probe=PROBE, probe_seeds=(0, 1), full=True,
                        eval_heads=16)
    sets = r.summary["sets"]
    assert r.features.shape == (4, 16) and r.labels.tolist() == [0, 1, 2, 3]
    assert sets["full"]["top1"]["mean"] > 0.99
    assert sets["ceiling"]["top1"]["mean"] >= sets["full"]["top1"]["mean"] - 0.01
    # The optimization lowered the objective below the random real rows it started from.
    assert sets["ceiling"]["heldout_meta_loss"] < 0.2 * sets["start"]["heldout_meta_loss"]
    curve = r.summary["meta_loss_curve"]
    assert curve[-1][1] < curve[0][1]


def test_points_recover_the_classes_when_each_class_is_one_point():
    # Every real row of class c is the point m_c: the sets with zero meta loss for every head include m itself.
    # Under N(0, 0.01^2) heads the softmax is nearly flat, and the head gradient sees the points only through
    # their offsets from the mean (g_W[c] ~ (mean - x_c) / C): started from noise, the optimized points must
    # take the shape of m (their centered configuration is m's, scale 1), up to a common shift.
    m = 3 * torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    real, y = m.repeat(50, 1), torch.arange(4).repeat(50)
    feats, labels, losses = optimize_features(real, y, 4, steps=1000, init="noise", lr=0.01)
    assert losses[0] > 0.5
    assert heldout_meta_loss(feats, labels, real, y, 4, 16, "normal001", seed=9) < 5e-3
    centered, target = feats - feats.mean(0), m - m.mean(0)
    scale = float((centered * target).sum() / (target * target).sum())
    assert scale == pytest.approx(1.0, abs=0.05)
    assert float((centered - target).norm() / target.norm()) < 0.05
    # Started at the optimum, the points stay there.
    still, _, _ = optimize_features(real, y, 4, steps=200, init="means", lr=0.01)
    torch.testing.assert_close(still, m, rtol=0, atol=0.05)


def test_bad_inputs_are_refused():
    from lgm.errors import LgmError

    real, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(LgmError, match="ipc"):
        optimize_features(real, y, 2, ipc=0)
    with pytest.raises(LgmError, match="class 2 has 0"):
        optimize_features(real, y, 3, steps=1)
    real[0, 0] = float("nan")
    with pytest.raises(LgmError, match="NaN"):
        optimize_features(real, y, 2, steps=1)


def test_ceiling_cli_writes_its_results(fashion_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    out = tmp_path / "ceiling"
    argv = ["ceiling", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--res", "16", "--crop", "14",
            "--steps", "30", "--epochs", "20", "--repeats", "2", "--val-per-class", "3", "--eval-heads", "4",
            "--device", "cpu", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    assert "optimized (the ceiling)" in capsys.readouterr().out
    summary = json.loads((out / "ceiling.json").read_text())
    assert summary["real_rows"] == 200 - 30 and summary["backbone"] == "toy_cnn"
    assert len(summary["sets"]["ceiling"]["top1"]["values"]) == 2 and "full" in summary["sets"]
    from safetensors.torch import load_file

    stored = load_file(str(out / "ceiling_features.safetensors"))
    assert stored["features"].shape[0] == 10 and stored["labels"].tolist() == list(range(10))
    # The real rows' features came through the feature store (a second run reuses them).
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 3
    assert main(argv + ["--per-class", "5"]) == 0
    assert json.loads((out / "ceiling.json").read_text())["real_rows"] == 50
    # The objective's options reach the optimization and are recorded; --subset-seed fixes the real rows.
    assert main(argv + ["--per-class", "5", "--seed", "1", "--subset-seed", "0", "--head-source", "trajectory",
                        "--trajectory-steps", "0", "3", "--heads", "2"]) == 0
    summary = json.loads((out / "ceiling.json").read_text())
    assert summary["objective"]["trajectory_steps"] == [0, 3] and summary["objective"]["heads"] == 2
    assert summary["settings"]["subset_seed"] == 0 and "seed 0" in summary["real_rows_from"]
    assert main(argv + ["--head-scale", "0"]) == 2
