"""The demo's comparison (distilled vs centroids vs neighbors vs random vs full) on the toy backbone."""

import dataclasses
import json
import time

import pytest
import torch
from safetensors.torch import load_file

from lgm.artifacts import DistilledSet
from lgm.backbones import load_backbone
from lgm.data import load_dataset
from lgm.demo import (DEMO_DISTILL, DemoConfig, Laps, RealFeatures, compare_with_real, demo_distill_config,
                      format_table, share_real_cache)
from lgm.distillation import distill
from lgm.evaluate import validation_split


@pytest.fixture
def toy_demo(fashion_root, tmp_path, monkeypatch):
    """The tiny Fashion-MNIST and the toy backbone, with a feature store of the test's own."""
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "cache"))
    return load_dataset("fashion-mnist"), load_backbone("toy_cnn")



def test_compare_with_real_scores_every_set_under_one_protocol(toy_demo, tmp_path, monkeypatch):
    ds, bb = toy_demo
    cfg = DemoConfig(res=16, crop=14, repeats=2, probe_views=3, val_per_class=4, progress=False)
    # A "distilled" set made of real training images outside the validation split: the neighbors
    # baseline must pick exactly these images back, so it must score exactly like them.
    train_index, _ = validation_split(ds.train.labels, cfg.val_per_class)
    picks = torch.stack([train_index[ds.train.labels[train_index] == c][3] for c in range(ds.num_classes)])
    distilled = DistilledSet(ds.train.load(picks, cfg.res), ds.train.labels[picks], list(ds.class_names), {})

    start = time.perf_counter()
    results = compare_with_real(distilled, ds, bb, cfg, torch.device("cpu"), log=lambda m: None)
    wall = time.perf_counter() - start
    # Where the time went: consecutive stages, none counted twice.
    stages = results["seconds"]
    assert list(stages) == ["test_and_validation_features", "train_features", "distilled_and_random_probes",
                            "centroid_and_neighbor_probes", "full_probe"]
    assert all(v >= 0 for v in stages.values()) and sum(stages.values()) <= wall + 0.05
    assert results["neighbors"]["values"] == results["distilled"]["values"]
    assert results["neighbors"]["nn1"] == results["distilled"]["nn1"]
    for key in ("distilled", "centroids", "neighbors", "random"):
        assert len(results[key]["values"]) == cfg.repeats
        assert all(0.0 <= v <= 1.0 for v in results[key]["values"])
    assert results["full"]["train_images"] == len(train_index)

    table = format_table(results | {"num_classes": ds.num_classes}).splitlines()
    assert len(table) == 2 + 5
    share = results["distilled"]["mean"] / results["full"]["mean"]
    assert f"| {share:.0%} |" in table[2]
    # The second evaluation reads every feature back from the store and gives the same numbers.
    assert compare_with_real(distilled, ds, bb, cfg, torch.device("cpu"), log=lambda m: None)["full"] == results["full"]


def test_demo_flags_reach_the_distillation():
    # Every demo flag that is also a distillation setting must change the run; the rest stay DEMO_DISTILL's.
    default = demo_distill_config(DemoConfig())
    assert default.init == "real" and default.steps == DEMO_DISTILL["steps"] and default.dataset == "fashion-mnist"
    assert default.real_aug == "none"
    changed = demo_distill_config(DemoConfig(init="noise", steps=7, augs=3, seed=5, real_aug="same"))
    assert (changed.init, changed.steps, changed.augs, changed.seed, changed.real_aug) == ("noise", 7, 3, 5, "same")
    assert changed.res == default.res and changed.real_gradient == default.real_gradient


def test_the_distillation_cache_is_taken_from_the_evaluation_features(toy_demo, tmp_path, monkeypatch):
    # --real-aug none at res == crop: a cached real row is the center-view feature the full-set probe needs.
    # The demo computes those once; the distillation then finds them as a standalone cache and uses it.
    ds, bb = toy_demo
    cfg = DemoConfig(res=16, crop=16, steps=3, repeats=1, probe_views=2, val_per_class=4, cache_per_class=20,
                     progress=False)
    dcfg = demo_distill_config(cfg)
    real = RealFeatures.build(ds, bb, cfg, torch.device("cpu"), Laps(), log=lambda m: None)
    cache = share_real_cache(dcfg, ds, bb, real, torch.device("cpu"), log=lambda m: None)
    assert cache is not None and cache.features.shape[0] == 20 * ds.num_classes

    own = tmp_path / "own"  # the same run with no standalone cache around: it computes its per-run cache
    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "empty"))
    distill(ds, bb, dcfg, out=own)
    computed = load_file(own / "real_features.safetensors")
    assert torch.equal(cache.labels, computed["labels"])
    torch.testing.assert_close(torch.as_tensor(cache.features).float(), computed["features"].float(),
                               atol=2e-3, rtol=2e-3)

    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "cache"))
    shared = tmp_path / "shared"
    distill(ds, bb, dcfg, out=shared)
    side = json.loads((shared / "real_side.json").read_text())
    assert side["mode"] == "standalone" and side["cache_id"] == cache.id
    assert not (shared / "real_features.safetensors").exists()


def test_no_shared_cache_where_cached_rows_are_not_center_views(toy_demo, tmp_path, monkeypatch):
    ds, bb = toy_demo
    cfg = DemoConfig(res=16, crop=16, repeats=1, probe_views=2, val_per_class=4, progress=False)
    real = RealFeatures.build(ds, bb, cfg, torch.device("cpu"), Laps(), log=lambda m: None)
    for changed in ({"real_aug": "same"}, {"crop": 14}, {"real_features": "live", "real_gradient": "batch"}):
        dcfg = dataclasses.replace(demo_distill_config(cfg), **changed)
        assert share_real_cache(dcfg, ds, bb, real, torch.device("cpu"), log=lambda m: None) is None
    part = RealFeatures.build(ds, bb, dataclasses.replace(cfg, full_train=20), torch.device("cpu"), Laps(),
                              log=lambda m: None)
    assert share_real_cache(demo_distill_config(cfg), ds, bb, part, torch.device("cpu"), log=lambda m: None) is None
    assert not (tmp_path / "cache" / "real").exists()
