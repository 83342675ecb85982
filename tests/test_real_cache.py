"""The standalone real-feature cache: round trip, resumable build, key checks, pickup by `lgm distill`."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
import torch

from lgm.augment import resize
from lgm.backbones import load_backbone
from lgm.cli import main
from lgm.data import load_dataset
from lgm.distillation import distill
from lgm.errors import LgmError
from lgm.real_cache import CacheFeaturesConfig, RealFeatureCache, build_real_cache, find_real_cache
from tests.conftest import TINY

CPU = torch.device("cpu")


def cfg_for(root: Path, **kw) -> CacheFeaturesConfig:
    settings = dict(dataset="fashion-mnist", backbone="toy_cnn", views=2, res=16, crop=14, per_class=5, batch=7,
                    data_root=str(root), progress=False)
    return CacheFeaturesConfig(**{**settings, **kw})


def build(root: Path, **kw) -> RealFeatureCache:
    cfg = cfg_for(root, **kw)
    ds = load_dataset("fashion-mnist", str(root))
    return build_real_cache(cfg, ds, load_backbone("toy_cnn"), CPU, contextlib.nullcontext())


def test_round_trip_features_equal_direct_ones(fashion_root, tmp_path):
    # aug "none": every view is the plain resize, so the expected features are computed independently.
    cache = build(fashion_root, aug="none", out=str(tmp_path / "c"))
    ds = load_dataset("fashion-mnist", str(fashion_root))
    idx = torch.from_numpy(__import__("numpy").load(tmp_path / "c" / "indices.npy"))
    assert idx.numel() == 50 and torch.bincount(ds.train.labels[idx]).tolist() == [5] * 10
    bb = load_backbone("toy_cnn")
    with torch.no_grad():
        direct = bb.features(resize(ds.train.load(idx, 16), 14))
    assert cache.features.dtype == torch.float16 and cache.features.shape == (100, 32)
    for v in range(2):
        torch.testing.assert_close(cache.features[v * 50:(v + 1) * 50].float(), direct, rtol=2e-3, atol=2e-3)
    assert torch.equal(cache.labels, ds.train.labels[idx].repeat(2))
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["complete"] and meta["chunks_done"] == meta["chunks_total"] == 2 * 8  # ceil(50 / 7) per view
    assert meta["key"]["backbone"] == "toy_cnn" and meta["key"]["format"] == 1


def counting_backbone():
    """The toy backbone, and a dict whose "n" counts its ``features`` calls (one per computed chunk)."""
    bb, calls = load_backbone("toy_cnn"), {"n": 0}
    inner = bb.features

    def counting(x):
        calls["n"] += 1
        return inner(x)

    bb.features = counting
    return bb, calls


def test_interrupted_build_resumes_and_equals_an_uninterrupted_one(fashion_root, tmp_path, monkeypatch):
    reference = build(fashion_root, out=str(tmp_path / "ref"))
    calls = {"n": 0}

    class Boom(RuntimeError):
        pass

    bb = load_backbone("toy_cnn")
    real_features = bb.features

    def failing(x):
        calls["n"] += 1
        if calls["n"] > 5:
            raise Boom("killed")
        return real_features(x)

    monkeypatch.setattr(bb, "features", failing)
    ds = load_dataset("fashion-mnist", str(fashion_root))
    cfg = cfg_for(fashion_root, out=str(tmp_path / "c"))
    with pytest.raises(Boom):
        build_real_cache(cfg, ds, bb, CPU, contextlib.nullcontext())
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    assert meta["chunks_done"] == 5 and not meta["complete"]
    with pytest.raises(LgmError, match=r"incomplete \(5/16 chunks\)"):
        RealFeatureCache.open(tmp_path / "c")
    monkeypatch.undo()
    logs = []
    counted, n_calls = counting_backbone()
    resumed = build_real_cache(cfg, ds, counted, CPU, contextlib.nullcontext(), log=logs.append)
    assert n_calls["n"] == 16 - 5, "only the missing chunks are computed"
    assert any("resuming" in m and "chunk 5/16" in m for m in logs)
    assert torch.equal(resumed.features, reference.features)
    assert torch.equal(resumed.labels, reference.labels)
    # A complete cache is not rebuilt.
    again = build_real_cache(cfg, ds, counted, CPU, contextlib.nullcontext(), log=logs.append)
    assert n_calls["n"] == 11 and "nothing to do" in logs[-1]
    assert torch.equal(again.features, reference.features)


def test_cache_for_other_settings_is_refused_naming_the_fields(fashion_root, tmp_path):
    cache = build(fashion_root, out=str(tmp_path / "c"))
    wanted = dict(cache.key, crop=12, augment=dict(cache.key["augment"], noise_std=0.1))
    with pytest.raises(LgmError) as info:
        RealFeatureCache.open(tmp_path / "c", wanted)
    msg = str(info.value)
    assert "built for other settings" in msg and "crop: cache has 14, requested 12" in msg and "augment:" in msg
    assert "backbone" not in msg.split("refusing it:")[1]
    # Building into the same directory with other settings is refused too, before anything is overwritten.
    with pytest.raises(LgmError, match=r"views: cache has 2, requested 3"):
        build(fashion_root, out=str(tmp_path / "c"), views=3)
    # And a distillation run naming it with another crop.
    with pytest.raises(LgmError, match=r"crop: cache has 14, requested 12"):
        distill("fashion-mnist", "toy_cnn", data_root=str(fashion_root), **{**TINY, "crop": 12}, steps=2,
                real_cache=str(tmp_path / "c"))


def test_distill_auto_uses_a_matching_cache_and_records_it(fashion_root, tmp_path):
    def run(out, **kw):
        return distill("fashion-mnist", "toy_cnn", out=out, data_root=str(fashion_root), **{**TINY, "steps": 4, **kw})

    live = run(tmp_path / "live")
    assert json.loads((tmp_path / "live" / "real_side.json").read_text())["mode"] == "live"
    assert live.meta["real_side"]["requested"] == "auto"
    root = Path(os.environ["LGM_CACHE_DIR"])
    assert find_real_cache(dict(build(fashion_root, views=3, per_class=0, batch=1000).key)) is not None
    cached = run(tmp_path / "auto")
    side = json.loads((tmp_path / "auto" / "real_side.json").read_text())
    assert side["mode"] == "standalone" and side["requested"] == "auto"
    assert Path(side["cache_path"]).parent == root / "real"
    assert cached.meta["real_side"] == side
    assert not torch.equal(cached.images, live.images), "another real side, other images"
    explicit = run(tmp_path / "explicit", real_cache=side["cache_path"], real_features="cached")
    assert torch.equal(explicit.images, cached.images)
    forced_live = run(tmp_path / "forced", real_features="live")
    assert torch.equal(forced_live.images, live.images)
    # Marking the cache incomplete: auto falls back to live.
    meta_path = Path(side["cache_path"]) / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "complete": False}))
    assert torch.equal(run(tmp_path / "fallback").images, live.images)


def test_cache_features_command(fashion_root, tmp_path, capsys):
    args = ["cache-features", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--views", "2", "--res", "16",
            "--crop", "14", "--per-class", "3", "--data-root", str(fashion_root), "--device", "cpu",
            "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent == tmp_path / "cache" / "real"
    assert RealFeatureCache.open(path).features.shape == (60, 32)
    assert main(args[:-2] + ["--out", str(path), "--views", "4"]) == 1  # a runtime error (usage errors exit 2)
    assert "views: cache has 2, requested 4" in capsys.readouterr().err


def test_resumed_run_keeps_its_recorded_real_side(fashion_root, tmp_path, monkeypatch):
    import lgm.distillation
    import lgm.rundir
    from tests.test_distill import StopAfter

    def run(out):
        return distill("fashion-mnist", "toy_cnn", out=out, data_root=str(fashion_root), **{**TINY, "steps": 8})

    reference = run(None)
    StopAfter.n = 3
    monkeypatch.setattr(lgm.distillation, "StopSignals", StopAfter)
    with pytest.raises(lgm.rundir.Interrupted):
        run(tmp_path / "run")
    monkeypatch.undo()
    build(fashion_root, views=2, per_class=0, batch=1000)  # a matching cache appears in the meantime
    resumed = run(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "real_side.json").read_text())["mode"] == "live"
    assert torch.equal(resumed.images, reference.images)
    assert run(tmp_path / "fresh").meta["real_side"]["mode"] == "standalone"


class CountingBackbone:
    """A backbone stand-in that counts the images it embeds."""

    def __init__(self, backbone):
        self.backbone, self.images = backbone, 0

    def __getattr__(self, name):
        return getattr(self.backbone, name)

    def features(self, x):
        self.images += x.shape[0]
        return self.backbone.features(x)


def test_unaugmented_views_are_computed_once_and_copied(fashion_root, tmp_path):
    from lgm.augment import AugmentConfig
    from lgm.features import compute_feature_cache

    ds = load_dataset("fashion-mnist", str(fashion_root))
    counting = CountingBackbone(load_backbone("toy_cnn"))
    cache = build_real_cache(cfg_for(fashion_root, aug="none", views=3, out=str(tmp_path / "c")), ds, counting, CPU,
                             contextlib.nullcontext())
    assert counting.images == 50 and cache.features.shape[0] == 150
    assert all(torch.equal(cache.features[:50], cache.features[v * 50:(v + 1) * 50]) for v in (1, 2))

    split = ds.train.subset(torch.arange(30))
    for kind, seen in (("none", 30), ("standard", 90)):
        counting.images = 0
        feats, labels = compute_feature_cache(counting, split, 16, 14, AugmentConfig(kind=kind), 3,
                                              torch.Generator().manual_seed(0), CPU, contextlib.nullcontext(),
                                              batch=7, progress=False)
        assert counting.images == seen and feats.shape == (90, 32) and torch.equal(labels, split.labels.repeat(3))
        assert torch.equal(feats[:30], feats[60:]) == (kind == "none")


def test_unaugmented_cache_key_ignores_crop_and_noise_settings(fashion_root):
    from lgm.real_cache import cache_key, select_indices

    ds = load_dataset("fashion-mnist", str(fashion_root))
    bb = load_backbone("toy_cnn")
    idx = select_indices(ds, 5, 0)

    def key(**kw):
        return cache_key(cfg_for(fashion_root, **kw), ds, bb, idx)
    assert key(aug="none", noise_std=0.5, clamp_crop=False) == key(aug="none")
    assert key(noise_std=0.5) != key() and key(aug="none") != key()


def test_resume_recomputes_a_done_chunk_whose_rows_changed_on_disk(fashion_root, tmp_path, monkeypatch):
    """A partial build's finished chunks are checked against their digests before the build goes on."""
    import numpy as np

    from lgm.real_cache import FEATURES

    reference = build(fashion_root, out=str(tmp_path / "ref"))
    bb = load_backbone("toy_cnn")
    real_features, calls = bb.features, {"n": 0}

    def stop_after_five(x):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt
        return real_features(x)

    bb.features = stop_after_five
    ds = load_dataset("fashion-mnist", str(fashion_root))
    cfg = cfg_for(fashion_root, out=str(tmp_path / "c"))
    with pytest.raises(KeyboardInterrupt):
        build_real_cache(cfg, ds, bb, CPU, contextlib.nullcontext())
    rows = np.memmap(tmp_path / "c" / FEATURES, dtype=np.float16, mode="r+",
                     shape=tuple(reference.features.shape))
    rows[2 * 7 + 3] = -rows[2 * 7 + 3]  # a row of chunk 2 (7 images per chunk), as a bad disk would leave it
    rows.flush()
    del rows
    logs = []
    fresh, counted = counting_backbone()
    resumed = build_real_cache(cfg, ds, fresh, CPU, contextlib.nullcontext(), log=logs.append)
    assert any("chunk 2 of the partial build" in m for m in logs)
    assert counted["n"] == 16 - 2, "chunks 0 and 1 are kept, chunk 2 onwards recomputed"
    assert torch.equal(resumed.features, reference.features)


def test_wants_cache_is_the_choice_a_run_makes_without_a_standalone_cache(fashion_root, tmp_path, monkeypatch):
    # The demo asks wants_cache whether to build a cache for the run; it must agree with the run's own choice.
    from lgm.config import DistillConfig
    from lgm.real_side import resolve_real_side, wants_cache

    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "empty"))
    ds = load_dataset("fashion-mnist", str(fashion_root))
    bb = load_backbone("toy_cnn")
    seen = set()
    for features in ("auto", "live", "cached"):
        for gradient in ("batch", "full"):
            try:
                cfg = DistillConfig(dataset="fashion-mnist", backbone="toy_cnn", real_features=features,
                                    real_gradient=gradient, data_root=str(fashion_root))
            except (LgmError, ValueError):
                continue  # full gradient with live features is refused by the config
            choice, cache = resolve_real_side(cfg, ds, bb, None)
            assert cache is None
            assert (choice.mode == "run-cache") == wants_cache(cfg), (features, gradient, choice)
            seen.add(choice.mode)
    assert seen == {"live", "run-cache"}


def test_resumed_joint_run_keeps_every_backbones_recorded_real_side(fashion_root, tmp_path, monkeypatch):
    # A standalone cache appearing between two sessions must not change the real side of a joint run under way.
    import lgm.distillation
    import lgm.rundir
    from lgm.distillation import make_config
    from lgm.real_side import cache_features_config
    from tests.test_distill import StopAfter
    from tests.test_joint import toy_variant

    bbs = [load_backbone("toy_cnn"), toy_variant("toy_b", dim=16, seed=1)]
    settings = {**TINY, "steps": 8, "real_gradient": "full", "cache_per_class": 6}

    def run(out):
        return distill("fashion-mnist", bbs, out=out, data_root=str(fashion_root), **settings)

    reference = run(None)
    StopAfter.n = 3
    monkeypatch.setattr(lgm.distillation, "StopSignals", StopAfter)
    with pytest.raises(lgm.rundir.Interrupted):
        run(tmp_path / "run")
    monkeypatch.undo()
    recorded = json.loads((tmp_path / "run" / "real_side.json").read_text())["backbones"]
    assert [(r["backbone"], r["mode"]) for r in recorded] == [("toy_cnn", "run-cache"), ("toy_b", "run-cache")]

    ds = load_dataset("fashion-mnist", str(fashion_root))
    cfg = make_config("fashion-mnist", bbs, None, {**settings, "data_root": str(fashion_root)})
    build_real_cache(cache_features_config(cfg, ds, bbs[0], progress=False), ds, bbs[0], CPU,
                     contextlib.nullcontext())  # a cache matching toy_cnn appears in the meantime
    resumed = run(tmp_path / "run")
    assert [s["mode"] for s in resumed.meta["real_sides"]] == ["run-cache", "run-cache"]
    assert torch.equal(resumed.images, reference.images)
    fresh = run(tmp_path / "fresh")
    assert [(s["backbone"], s["mode"]) for s in fresh.meta["real_sides"]] == [("toy_cnn", "standalone"),
                                                                              ("toy_b", "run-cache")]
    assert fresh.meta["real_side"]["mode"] == "standalone"
    side = json.loads((tmp_path / "fresh" / "real_side.json").read_text())["backbones"]
    assert side[0]["cache_id"] == fresh.meta["real_sides"][0]["cache_id"]


def test_undoing_a_tests_patches_keeps_the_private_cache_dir(monkeypatch):
    private = os.environ["LGM_CACHE_DIR"]
    assert Path(private).resolve() != (Path.home() / ".cache" / "lgm").resolve()
    monkeypatch.setenv("LGM_CACHE_DIR", "/elsewhere")
    monkeypatch.undo()
    assert os.environ["LGM_CACHE_DIR"] == private
