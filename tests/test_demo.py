"""The demo's comparison (distilled vs centroids vs neighbors vs random vs full) on the toy backbone."""

import time

import torch

from lgm.artifacts import DistilledSet
from lgm.backbones import load_backbone
from lgm.data import load_dataset
from lgm.demo import DEMO_DISTILL, DemoConfig, compare_with_real, demo_distill_config, format_table
from lgm.evaluate import validation_split


def test_compare_with_real_scores_every_set_under_one_protocol(fashion_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    monkeypatch.setenv("LGM_CACHE_DIR", str(tmp_path / "cache"))
    ds = load_dataset("fashion-mnist")
    bb = load_backbone("toy_cnn")
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
    assert list(stages) == ["test_and_validation_features", "distilled_and_random_probes", "train_features",
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
