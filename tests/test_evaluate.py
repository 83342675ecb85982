"""Evaluation end to end on the toy backbone: the eval CLI, the feature store, honest selection."""

import json

import pytest
import torch

from lgm.artifacts import DistilledSet, atomic_save_tensors
from lgm.backbones import load_backbone
from lgm.cli import main
from lgm.data import ImageDataset, ImageSplit, load_dataset
from lgm.evaluate import EvalContext
from lgm.feature_store import FeatureStore
from lgm.probe import ProbeConfig

FAST_PROBE = ProbeConfig(views=4, epochs=40, patience=10)


def band_artifact(ds: ImageDataset, res: int = 16) -> DistilledSet:
    """The first training image of every class, as an artifact (what a baseline selection looks like)."""
    idx = torch.stack([torch.nonzero(ds.train.labels == c).flatten()[0] for c in range(ds.num_classes)])
    return DistilledSet(ds.train.load(idx, res), ds.train.labels[idx], list(ds.class_names),
                        {"dataset": ds.name, "backbone": "toy_cnn", "config": {"res": res, "crop": 14}})


def test_eval_cli_writes_eval_json(fashion_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    ds = load_dataset("fashion-mnist")
    band_artifact(ds).save(tmp_path / "sel" / "distilled")
    cache = tmp_path / "cache"
    argv = ["eval", str(tmp_path / "sel"), "--repeats", "2", "--views", "4", "--epochs", "30",
            "--val-per-class", "3", "--device", "cpu", "--cache-dir", str(cache)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "toy_cnn" in out and "top-1" in out
    stored = json.loads((tmp_path / "sel" / "eval.json").read_text())
    r = stored["toy_cnn/spec"]
    assert len(r["top1"]["values"]) == 2 and 0.0 <= r["top1"]["mean"] <= 1.0
    assert r["protocol"]["selection"].startswith("early stopping on 30 validation images")
    # test + validation features, and one augmented-view pool per repeat
    assert len(list((cache / "features").glob("*.safetensors"))) == 4


def test_interrupted_evaluation_resumes_from_stored_view_features(fashion_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    ds = load_dataset("fashion-mnist")
    bb = load_backbone("toy_cnn")
    art = band_artifact(ds)
    store = FeatureStore(tmp_path)
    first = EvalContext.build(ds, bb, 16, 14, torch.device("cpu"), FAST_PROBE, val_per_class=3, store=store)
    scores = first.score_images(art.images, art.labels, [0, 1])

    calls = []
    real_features = bb.features
    monkeypatch.setattr(bb, "features", lambda x: calls.append(x.shape[0]) or real_features(x))
    again = EvalContext.build(ds, bb, 16, 14, torch.device("cpu"), FAST_PROBE, val_per_class=3, store=store)
    assert again.score_images(art.images, art.labels, [0, 1]) == scores
    assert calls == [art.images.shape[0]], "only the 1-NN center views may be recomputed"
    # Other images, or another seed, are new entries.
    again.score_images(art.images.flip(-1), art.labels, [2])
    assert sum(calls) > 2 * art.images.shape[0]


def test_eval_refuses_an_artifact_of_another_dataset(fashion_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    ds = load_dataset("fashion-mnist")
    art = band_artifact(ds)
    DistilledSet(art.images[:4], torch.arange(4), [f"c{i}" for i in range(4)], art.meta).save(tmp_path / "a")
    assert main(["eval", str(tmp_path / "a.safetensors"), "--device", "cpu", "--no-cache"]) == 1  # a runtime error (usage errors exit 2)
    assert "has 4 classes but dataset fashion-mnist has 10" in capsys.readouterr().err


def test_poisoned_test_split_changes_scores_not_selection(fashion_root, monkeypatch):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    ds = load_dataset("fashion-mnist")
    bb = load_backbone("toy_cnn")
    art = band_artifact(ds)
    poisoned_test = ImageSplit(torch.flip(ds.test.images, dims=[0]), (ds.test.labels + 3) % 10)
    poisoned = ImageDataset(ds.name, ds.class_names, ds.train, poisoned_test)
    scores = []
    for d in (ds, poisoned):
        ctx = EvalContext.build(d, bb, 16, 14, torch.device("cpu"), FAST_PROBE, val_per_class=3)
        scores.append(ctx.score_images(art.images, art.labels, [0, 1]))
    assert scores[0]["epochs"] == scores[1]["epochs"], "the chosen epochs must not depend on the test split"
    assert scores[0]["top1"]["values"] != scores[1]["top1"]["values"]


def test_feature_store_keys_change_with_every_input(tmp_path):
    store = FeatureStore(tmp_path)
    base = {"backbone": "a", "dataset": "d", "split": "test", "res": 16, "crop": 14, "weights": "w"}
    calls = []

    def compute(v):
        def f():
            calls.append(v)
            return torch.full((2, 3), float(v))
        return f

    first = store.get(base, compute(1))
    again = store.get(base, compute(2))
    assert torch.equal(first, again) and calls == [1], "the second read must come from disk"
    for k, v in (("backbone", "b"), ("res", 32), ("crop", 12), ("split", "val"), ("weights", "w2"), ("dataset", "e")):
        changed = store.get({**base, k: v}, compute(3))
        assert torch.equal(changed, torch.full((2, 3), 3.0)), k
    assert calls == [1] + [3] * 6


def test_feature_store_never_serves_a_mismatched_entry(tmp_path):
    store = FeatureStore(tmp_path)
    key = {"backbone": "a", "split": "test"}
    store.get(key, lambda: torch.zeros(2))
    other = {"backbone": "b", "split": "test"}
    # A file copied over another key's name must be detected through the stored key.
    store.path({**other, "feature_version": 1}).write_bytes(store.path({**key, "feature_version": 1}).read_bytes())
    assert torch.equal(store.get(other, lambda: torch.ones(2)), torch.ones(2))


def test_row_features_resume_after_a_kill_at_the_last_finished_chunk(tmp_path):
    full = torch.randn(23, 4, generator=torch.Generator().manual_seed(0))
    key = {"backbone": "a", "split": "train"}
    calls, kill = [], [True]

    def compute(start, stop):
        calls.append((start, stop))
        if start >= 12 and kill[0]:
            raise KeyboardInterrupt  # killed inside the third chunk
        return full[start:stop]

    store = FeatureStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        store.get_rows(key, 23, compute, chunk=6, batch=3)
    assert calls == [(0, 3), (3, 6), (6, 9), (9, 12), (12, 15)]
    assert not store.path({**key, "feature_version": 1}).exists(), "no entry before every row is computed"
    calls.clear()
    kill[0] = False
    got = store.get_rows(key, 23, compute, chunk=6, batch=3)
    assert torch.equal(got, full)
    assert calls == [(12, 15), (15, 18), (18, 21), (21, 23)], "finished chunks are not recomputed"
    # The finished entry is the one `get` serves for the key, and the chunk files are gone.
    assert torch.equal(store.get(key, lambda: torch.zeros(1)), full)
    assert not any(p.suffix == ".partial" for p in tmp_path.rglob("*"))


def test_row_features_ignore_chunks_of_another_key(tmp_path):
    store = FeatureStore(tmp_path)
    store.get_rows({"backbone": "a"}, 6, lambda s, e: torch.zeros(e - s, 2), chunk=3, batch=3)
    # A chunk file copied under another key's name must not be served.
    other = {"backbone": "b", "feature_version": 1}
    part = store.path(other).with_suffix(".partial")
    part.mkdir(parents=True)
    atomic_save_tensors(part / "0000000000-0000000003.safetensors", {"features": torch.zeros(3, 2)},
                        metadata={"key": '{"backbone": "a", "feature_version": 1, "rows": [0, 3]}'})
    got = store.get_rows({"backbone": "b"}, 6, lambda s, e: torch.ones(e - s, 2), chunk=3, batch=3)
    assert torch.equal(got, torch.ones(6, 2))


def test_nonfinite_features_are_not_cached(tmp_path):
    from lgm.errors import LgmError

    with pytest.raises(LgmError, match="NaN"):
        FeatureStore(tmp_path).get({"k": 1}, lambda: torch.tensor([float("nan")]))


def test_neighbors_pick_the_most_similar_image_of_the_same_class():
    from lgm.selection import neighbor_indices

    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.9, 0.1], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1, 1])
    query = torch.tensor([[1.0, 0.05], [1.0, 0.05]])
    # Query 0 (class 0) -> row 0; query 1 (class 1): row 2 is the best match even though row 0 is closer overall.
    assert neighbor_indices(query, torch.tensor([0, 1]), feats, labels).tolist() == [0, 2]


def test_random_selection_stays_in_the_pool_and_is_class_major():
    from lgm.selection import random_indices

    labels = torch.arange(4).repeat_interleave(25)
    pool = torch.arange(0, 100, 2)  # even rows only
    idx = random_indices(labels, 2, seed=3, pool=pool)
    assert (idx % 2 == 0).all()
    assert labels[idx].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(idx, random_indices(labels, 2, seed=3, pool=pool))


def test_baselines_cli_writes_artifacts_that_eval_scores(fashion_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    ds = load_dataset("fashion-mnist")
    band_artifact(ds).save(tmp_path / "distilled")
    out = tmp_path / "base"
    assert main(["baselines", "--dataset", "fashion-mnist", "--backbone", "toy_cnn", "--out", str(out),
                 "--random-seeds", "2", "--distilled", str(tmp_path / "distilled.json"), "--val-per-class", "3",
                 "--device", "cpu", "--no-cache"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["centroids", "full", "neighbors", "random_s0", "random_s1"]
    val_rows = set(__import__("lgm.evaluate", fromlist=["x"]).validation_split(ds.train.labels, 3)[1].tolist())
    for name in ("centroids", "neighbors", "random_s0"):
        art = DistilledSet.load(out / name)
        assert art.labels.tolist() == list(range(10))
        assert not val_rows & set(art.meta["indices"]), "baselines must never pick validation images"
        assert torch.equal(art.labels, ds.train.labels[torch.tensor(art.meta["indices"])])
    assert main(["eval", str(out / "centroids"), str(out / "full"), "--backbone", "toy_cnn", "--repeats", "1",
                 "--views", "2", "--epochs", "5", "--val-per-class", "3", "--device", "cpu", "--no-cache"]) == 0
    table = capsys.readouterr().out
    assert str(out / "full") in table and str(out / "centroids") in table


def test_crossmodel_matrix_marks_the_same_model_entry(fashion_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    ds = load_dataset("fashion-mnist")
    art = band_artifact(ds)
    art.save(tmp_path / "a" / "distilled")
    DistilledSet(art.images.flip(-1), art.labels, art.class_names, art.meta | {"backbone": "effnet_lite0"}).save(
        tmp_path / "b" / "distilled")
    out = tmp_path / "matrix"
    assert main(["crossmodel", str(tmp_path / "a"), str(tmp_path / "b"), "--backbone", "toy_cnn", "effnet_lite0",
                 "--random-init", "--res", "32", "--crop", "32", "--repeats", "1", "--views", "2", "--epochs", "5",
                 "--val-per-class", "3",
                 "--device", "cpu", "--no-cache", "--out", str(out)]) == 0
    matrix = json.loads((out / "crossmodel.json").read_text())
    assert [r["distilled_with"] for r in matrix["rows"]] == ["toy_cnn", "effnet_lite0"]
    first, second = matrix["rows"]
    assert first["same_model"] == first["top1"]["toy_cnn"]
    assert first["cross_model_mean"] == first["top1"]["effnet_lite0"]
    assert second["same_model"] == second["top1"]["effnet_lite0"]
    # 1-NN accuracy per evaluating backbone (what lgm alignment-vs-transfer normalises), multiples of 1/50.
    assert all(set(r["nn1"]) == {"toy_cnn", "effnet_lite0"} for r in matrix["rows"])
    assert all(abs(v * 50 - round(v * 50)) < 1e-9 for r in matrix["rows"] for v in r["nn1"].values())
    md = (out / "crossmodel.md").read_text()
    assert "1-NN accuracy" in md
    assert md.count("**") == 4  # one bold same-model cell per row
    assert len((out / "crossmodel.csv").read_text().strip().splitlines()) == 3


def test_grouped_test_split_reports_worst_group(fashion_root, monkeypatch):
    monkeypatch.setenv("LGM_DATA_ROOT", str(fashion_root))
    ds = load_dataset("fashion-mnist")
    test = ImageSplit(ds.test.images, ds.test.labels, groups=(ds.test.labels >= 5).long())
    grouped = ImageDataset(ds.name, ds.class_names, ds.train, test, meta={"group_names": ["low", "high"]})
    ctx = EvalContext.build(grouped, load_backbone("toy_cnn"), 16, 14, torch.device("cpu"), FAST_PROBE,
                            val_per_class=3)
    r = ctx.score_images(band_artifact(ds).images, torch.arange(10), [0, 1])
    assert set(r["groups"]) == {"low", "high"}
    for i in range(2):
        per = [r["groups"][g]["values"][i] for g in ("low", "high")]
        assert r["worst_group_top1"]["values"][i] == min(per)
        # Equal-sized groups: overall top-1 is their mean.
        assert r["top1"]["values"][i] == pytest.approx(sum(per) / 2, abs=1e-6)


def test_stored_features_follow_the_images_not_just_their_names(tmp_path):
    """A folder whose image was edited in place (same name, same label), or an in-memory split with other pixels,
    is never served the features stored for the old images."""
    import os

    from lgm.data import load_dataset as load
    from lgm.evaluate import stored_split_features
    from tests.dataset_fixtures import write_image, write_image_folder

    root = tmp_path / "pets"
    for split in ("train", "test"):
        write_image_folder(root / split, ["cat", "dog"], per_class=3, ext=".png")
    bb = load_backbone("toy_cnn")
    store = FeatureStore(tmp_path / "cache")

    def feats():
        ds = load(f"folder:{root}")
        return stored_split_features(ds, "test", None, bb, 16, 14, torch.device("cpu"), store)

    before = feats()
    edited = sorted((root / "test" / "cat").iterdir())[0]
    stat = edited.stat()
    write_image(edited, (255, 0, 0))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = feats()
    assert not torch.equal(before, after), "the edited image's features are recomputed"
    assert torch.equal(after, feats())  # and stored again under the new content

    ds = load_dataset("fashion-mnist", str(write_band(tmp_path)))
    other = ImageDataset(ds.name, ds.class_names, ds.train, ImageSplit(255 - ds.test.images, ds.test.labels))
    a = stored_split_features(ds, "test", None, bb, 16, 14, torch.device("cpu"), store)
    b = stored_split_features(other, "test", None, bb, 16, 14, torch.device("cpu"), store)
    assert not torch.equal(a, b)


def write_band(tmp_path):
    from tests.conftest import write_fashion_fixture

    return write_fashion_fixture(tmp_path / "fm", n_train=40, n_test=20)
