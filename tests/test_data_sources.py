"""Datasets users bring: a single class-folder tree (carved test split), Hugging Face directories, in-memory sets."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lgm.data import (
    BadImageError,
    ImageDataset,
    ImageSplit,
    check_dataset_name,
    check_split,
    load_dataset,
    register_dataset,
)
from lgm.errors import DatasetError, MissingResourceError
from tests.dataset_fixtures import class_value, label_from_pixels, write_class_image

CLASSES = ["cat", "cow", "dog"]  # sorted: label = position


def write_tree(root: Path, counts: dict[str, int]) -> Path:
    for c, cls in enumerate(sorted(counts)):
        for i in range(counts[cls]):
            write_class_image(root / cls / f"{cls}_{i:02d}.jpg", c)
    return root


def rel_paths(split, root: Path) -> list[str]:
    return [Path(p).relative_to(root).as_posix() for p in split.paths]


def expected_test(root: Path, test: float | int, seed: int) -> list[str]:
    """The documented carve, written out: classes in sorted order, each its sorted files, one generator."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for cls in sorted(os.listdir(root)):
        files = sorted(f"{cls}/{f}" for f in os.listdir(root / cls))
        n = len(files)
        k = test if isinstance(test, int) else round(test * n)
        k = min(max(k, 1), n - 1)
        perm = torch.randperm(n, generator=gen)
        out += [files[i] for i in perm[:k].tolist()]
    return sorted(out)


# ---------------------------------------------------------------------------------------------- folder: one tree


def test_single_tree_carves_a_stratified_seeded_recorded_split(tmp_path):
    root = write_tree(tmp_path / "pets", {"cat": 20, "cow": 6, "dog": 2})
    ds = load_dataset(f"folder:{root}")
    assert ds.class_names == CLASSES
    train, test = rel_paths(ds.train, root), rel_paths(ds.test, root)
    assert sorted(train + test) == sorted(f"{c}/{f}" for c in CLASSES for f in os.listdir(root / c))
    assert not set(train) & set(test)
    # 20% per class, at least one test image, at least one left for training
    assert torch.bincount(ds.test.labels, minlength=3).tolist() == [4, 1, 1]
    assert torch.bincount(ds.train.labels, minlength=3).tolist() == [16, 5, 1]
    assert sorted(test) == expected_test(root, 0.2, 0)
    # labels agree with the pixels (each fixture image is coloured by its class)
    assert label_from_pixels(ds.test.load(torch.arange(len(ds.test)), 8)) == ds.test.labels.tolist()
    record = ds.meta["split"]
    assert (record["kind"], record["test"], record["seed"]) == ("carved", 0.2, 0)
    assert (record["images"], record["train_images"], record["test_images"]) == (28, 22, 6)
    label_of = {c: i for i, c in enumerate(CLASSES)}
    lines = "".join(f"{label_of[p.split('/')[0]]}\t{p}\n" for p in sorted(test))
    assert record["test_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    json.dumps(ds.meta)  # an artifact can store it as is


def test_split_options_size_and_seed(tmp_path):
    root = write_tree(tmp_path / "pets", {"cat": 20, "cow": 6, "dog": 2})
    default = load_dataset(f"folder:{root}")
    explicit = load_dataset(f"folder,test=0.2,seed=0:{root}")
    assert list(explicit.test.paths) == list(default.test.paths)
    other_seed = load_dataset(f"folder,seed=3:{root}")
    assert sorted(rel_paths(other_seed.test, root)) == expected_test(root, 0.2, 3)
    assert other_seed.meta["split"]["test_sha256"] != default.meta["split"]["test_sha256"]
    assert other_seed.meta["split"]["images_sha256"] == default.meta["split"]["images_sha256"]
    per_class = load_dataset(f"folder,test=3,seed=1:{root}")
    assert torch.bincount(per_class.test.labels).tolist() == [3, 3, 1]  # dog keeps one for training
    assert per_class.meta["split"]["test"] == 3
    tenth = load_dataset(f"folder,test=0.1:{root}")
    assert torch.bincount(tenth.test.labels).tolist() == [2, 1, 1]


def test_split_is_identical_in_another_process(tmp_path):
    root = write_tree(tmp_path / "pets", {"cat": 9, "cow": 7, "dog": 5})
    name = f"folder,test=0.3,seed=7:{root}"
    here = load_dataset(name)
    code = ("import json, sys; from lgm.data import load_dataset; ds = load_dataset(sys.argv[1]); "
            "print(json.dumps([list(map(str, ds.test.paths)), ds.meta['split']]))")
    out = subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, check=True,
                         env=os.environ | {"OMP_NUM_THREADS": "1"}).stdout
    paths, record = json.loads(out)
    assert paths == list(map(str, here.test.paths)) and record == here.meta["split"]


def test_check_split_refuses_a_changed_tree(tmp_path):
    root = write_tree(tmp_path / "pets", {"cat": 5, "dog": 5})
    recorded = load_dataset(f"folder:{root}").meta["split"]
    check_split(recorded, load_dataset(f"folder:{root}"), "run")
    with pytest.raises(DatasetError, match=r"the test split of folder,seed=1:.* differs from the one run recorded"):
        check_split(recorded, load_dataset(f"folder,seed=1:{root}"), "run")
    write_class_image(root / "dog" / "extra.jpg", 1)
    with pytest.raises(DatasetError, match="the image list of .* differs"):
        check_split(recorded, load_dataset(f"folder:{root}"), "run")


def test_a_single_image_class_is_an_error_naming_it(tmp_path):
    root = write_tree(tmp_path / "pets", {"cat": 4, "cow": 1, "dog": 3})
    with pytest.raises(DatasetError, match=r"class\(es\) with a single image: cow"):
        load_dataset(f"folder:{root}")


def test_bad_files_do_not_move_the_split(tmp_path):
    root = write_tree(tmp_path / "pets", {"cat": 10, "dog": 10})
    good = load_dataset(f"folder,test=0.5:{root}")
    victim = Path(good.test.paths[0])
    victim.write_bytes(b"")
    with pytest.raises(BadImageError, match=victim.name):
        load_dataset(f"folder,test=0.5:{root}")
    skipped = load_dataset(f"folder,test=0.5:{root}", on_bad_image="skip")
    assert list(skipped.test.paths) == list(good.test.paths[1:])
    assert list(skipped.train.paths) == list(good.train.paths)
    assert skipped.meta["split"]["test_sha256"] == good.meta["split"]["test_sha256"]


def test_bad_options_and_ambiguous_layouts_are_explained(tmp_path):
    root = write_tree(tmp_path / "pets", {"cat": 3, "dog": 3})
    for opts, msg in (("test=0", "must be a fraction"), ("test=1.5", "must be a fraction"),
                      ("test=x", "must be a fraction"), ("seed=-1", ">= 0"), ("seed=a", "must be an integer"),
                      ("size=3", "unknown option 'size'"), ("test", "not key=value")):
        with pytest.raises(DatasetError, match=msg):
            check_dataset_name(f"folder,{opts}:{root}")
        with pytest.raises(DatasetError, match=msg):
            load_dataset(f"folder,{opts}:{root}")
    pair = tmp_path / "pair"
    write_tree(pair / "train", {"a": 1, "b": 1})
    write_tree(pair / "test", {"a": 1, "b": 1})
    assert len(load_dataset(f"folder:{pair}").test) == 2  # a pair of splits is read as is
    with pytest.raises(DatasetError, match="has its own train/ and test/ splits"):
        load_dataset(f"folder,test=0.5:{pair}")
    only_train = tmp_path / "only"
    write_tree(only_train / "train", {"a": 2, "b": 2})
    with pytest.raises(MissingResourceError, match="has train/ but not both"):
        load_dataset(f"folder:{only_train}")


def test_a_path_with_commas_colons_and_query_characters(tmp_path):
    root = write_tree(tmp_path / "my,data:v1?test=0.9&x", {"cat": 5, "dog": 5})
    ds = load_dataset(f"folder:{root}")
    assert ds.meta["split"]["test"] == 0.2 and len(ds.test) == 2
    assert len(load_dataset(f"folder,test=0.4:{root}").test) == 4


def test_distill_then_evaluate_on_a_single_tree(tmp_path):
    from lgm.distillation import distill
    from lgm.evaluate import EvalConfig, evaluate_artifact

    root = write_tree(tmp_path / "pets", {"cat": 6, "dog": 6})
    name = f"folder,test=0.5,seed=2:{root}"
    art = distill(name, "toy_cnn", steps=2, augs=2, res=16, crop=14, device="cpu", progress=False,
                  checkpoint_every=5)
    assert art.meta["dataset"] == name  # what every later command reloads
    cfg = EvalConfig(repeats=1, views=2, epochs=5, val_per_class=1, device="cpu", cache=False)
    res = evaluate_artifact(art, cfg, log=lambda *_: None)
    assert res["toy_cnn"]["dataset"] == name and 0.0 <= res["toy_cnn"]["top1"]["mean"] <= 1.0
    # The artifact records the carved split; a tree that changed since is refused, never silently re-split.
    assert art.meta["split"]["test_sha256"]
    write_class_image(root / "dog" / "dog_new.jpg", 1)
    with pytest.raises(DatasetError, match="differs from the one"):
        evaluate_artifact(art, cfg, log=lambda *_: None)


# ---------------------------------------------------------------------------------------------- hf: directories


def png_bytes(value: int, size: tuple[int, int] = (9, 7)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buf, "PNG")
    return buf.getvalue()


def hf_split(labels: list, names: list[str] | None = None, image_col: str = "image", label_col: str = "label",
             extra: dict | None = None, colours: list[int] | None = None):
    """A datasets.Dataset of flat PNGs coloured by class (class_value), with a ClassLabel (or plain) label column."""
    datasets = pytest.importorskip("datasets")
    label_feature = datasets.ClassLabel(names=names) if names else None
    colours = colours if colours is not None else [max(y, 0) for y in labels]
    features = {image_col: datasets.Image()}
    data = {image_col: [{"bytes": png_bytes(class_value(c)), "path": None} for c in colours], label_col: labels}
    if label_feature is not None:
        features[label_col] = label_feature
    else:
        features[label_col] = datasets.Value("string" if isinstance(labels[0], str) else "int64")
    for k, (feature, values) in (extra or {}).items():
        features[k], data[k] = feature, values
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def pixels_agree(split) -> bool:
    return label_from_pixels(split.load(torch.arange(len(split)), 8)) == split.labels.tolist()


def test_hf_dataset_dict_with_validation(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["ant", "bee", "cicada"]
    dd = datasets.DatasetDict(train=hf_split([0, 1, 2, 2, 1, 0, 2], names), validation=hf_split([2, 0, 1], names),
                              test=hf_split([1, 1, 0, 2], names))
    dd.save_to_disk(str(tmp_path / "insects"))
    ds = load_dataset(f"hf:{tmp_path / 'insects'}")
    assert ds.class_names == names
    assert ds.train.labels.tolist() == [0, 1, 2, 2, 1, 0, 2]
    assert ds.test.labels.tolist() == [1, 1, 0, 2] and ds.val.labels.tolist() == [2, 0, 1]
    assert all(pixels_agree(s) for s in (ds.train, ds.test, ds.val))
    assert "split" not in ds.meta and ds.meta["hf_splits"] == {"train": "train", "test": "test", "val": "validation"}
    with pytest.raises(DatasetError, match="has its own 'test' split"):
        load_dataset(f"hf,test=0.5:{tmp_path / 'insects'}")


def test_hf_single_split_gets_the_carved_split_of_a_folder(tmp_path):
    names = ["ant", "bee"]
    labels = [0, 1] * 10 + [0] * 5
    hf_split(labels, names).save_to_disk(str(tmp_path / "one"))
    ds = load_dataset(f"hf,test=0.2,seed=4:{tmp_path / 'one'}")
    record = ds.meta["split"]
    assert (record["test"], record["seed"], record["images"]) == (0.2, 4, 25)
    assert torch.bincount(ds.test.labels).tolist() == [3, 2]  # round(0.2 * 15), round(0.2 * 10)
    assert len(ds.train) + len(ds.test) == 25 and pixels_agree(ds.test) and pixels_agree(ds.train)
    # the rows drawn, by the documented method
    gen = torch.Generator().manual_seed(4)
    want = []
    for c in (0, 1):
        rows = [i for i, y in enumerate(labels) if y == c]
        perm = torch.randperm(len(rows), generator=gen)
        want += [rows[i] for i in perm[:round(0.2 * len(rows))].tolist()]
    lines = "".join(f"{labels[i]}\ttrain/{i}\n" for i in sorted(want))
    assert record["test_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    again = load_dataset(f"hf,test=0.2,seed=4:{tmp_path / 'one'}")
    assert again.meta["split"] == record and list(again.test.paths) == list(ds.test.paths)


def test_hf_parquet_with_plain_labels_and_an_unlabelled_test(tmp_path, capsys):
    root = tmp_path / "pq"
    (root / "data").mkdir(parents=True)
    hf_split([3, 5, 5, 3, 7, 7]).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    hf_split([5, 3, 7]).to_parquet(str(root / "data" / "validation-00000-of-00001.parquet"))
    hf_split([-1, -1]).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    ds = load_dataset(f"hf:{root}")
    # integer labels without class names: their sorted distinct values are the classes
    assert ds.class_names == ["3", "5", "7"]
    assert ds.train.labels.tolist() == [0, 1, 1, 0, 2, 2]
    assert label_from_pixels(ds.train.load(torch.arange(6), 8)) == [3, 5, 5, 3, 7, 7]
    # the test split has no labels: left out (said so), and validation is the test split
    assert "split 'test' has no labels" in capsys.readouterr().err
    assert ds.meta["hf_splits"] == {"train": "train", "test": "validation"} and ds.test.labels.tolist() == [1, 0, 2]
    # string labels in a flat parquet file: one split, carved
    flat = tmp_path / "flat"
    flat.mkdir()
    words = ["owl", "bat"] * 4
    hf_split(words, colours=[0 if w == "bat" else 1 for w in words]).to_parquet(str(flat / "0000.parquet"))
    ds = load_dataset(f"hf:{flat}")
    assert ds.class_names == ["bat", "owl"] and ds.meta["split"]["test"] == 0.2
    assert pixels_agree(ds.train) and pixels_agree(ds.test)


def test_hf_columns_are_detected_or_named(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["a", "b"]
    two = hf_split([0, 1] * 4, names, image_col="photo", label_col="coarse",
                   extra={"fine": (datasets.ClassLabel(names=["x", "y", "z"]), [0, 1, 2] * 2 + [0, 1])})
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(DatasetError, match=r"several ClassLabel columns \(coarse, fine\).*hf,label=COLUMN:"):
        load_dataset(f"hf:{tmp_path / 'two'}")
    ds = load_dataset(f"hf,label=fine,test=1:{tmp_path / 'two'}")
    assert ds.class_names == ["x", "y", "z"] and ds.meta["hf_columns"] == {"image": "photo", "label": "fine"}
    with pytest.raises(DatasetError, match="no column 'nope'"):
        load_dataset(f"hf,image=nope:{tmp_path / 'two'}")
    with pytest.raises(DatasetError, match="column 'coarse' holds int64, not images"):
        load_dataset(f"hf,image=coarse,label=fine:{tmp_path / 'two'}")


def test_hf_bad_image_bytes_fail_or_are_skipped(tmp_path):
    datasets = pytest.importorskip("datasets")
    good = hf_split([0, 1, 0, 1, 0, 1], ["a", "b"])
    rows = good.to_dict()
    rows["image"][2] = {"bytes": b"not a png", "path": None}
    datasets.Dataset.from_dict(rows, features=good.features).save_to_disk(str(tmp_path / "bad"))
    name = f"hf,test=1:{tmp_path / 'bad'}"
    ds = load_dataset(name)
    holder = next(s for s in (ds.train, ds.test) if any(p.endswith("train row 2") for p in s.paths))
    with pytest.raises(BadImageError, match="train row 2: UnidentifiedImageError"):
        holder.load(torch.arange(len(holder)), 8)
    skipped = load_dataset(name, on_bad_image="skip")
    sides = [s.materialize(8) for s in (skipped.train, skipped.test)]
    assert sum(len(s) for s in sides) == 5  # the bad row is left out, with its label
    assert all(label_from_pixels(s.load(torch.arange(len(s)), 8)) == s.labels.tolist() for s in sides)


def test_hf_without_the_extra_names_it(tmp_path, monkeypatch):
    (tmp_path / "d").mkdir()
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(MissingResourceError, match=r"pip install 'lgm\[hf\]'"):
        load_dataset(f"hf:{tmp_path / 'd'}")


def test_distill_reads_an_hf_dataset(tmp_path):
    from lgm.distillation import distill

    hf_split([0, 1, 2] * 4, ["x", "y", "z"]).save_to_disk(str(tmp_path / "d"))
    art = distill(f"hf:{tmp_path / 'd'}", "toy_cnn", steps=2, augs=2, res=16, crop=14, device="cpu",
                  progress=False, checkpoint_every=5)
    assert art.images.shape == (3, 3, 16, 16) and art.class_names == ["x", "y", "z"]


# ---------------------------------------------------------------------------------------------- in memory


def band_dataset(name: str = "bands", n_train: int = 40, n_test: int = 20) -> ImageDataset:
    """Four classes, each a bright horizontal band at its own height, built from tensors."""
    gen = torch.Generator().manual_seed(0)

    def split(n: int) -> ImageSplit:
        y = torch.arange(n) % 4
        x = (torch.rand(n, 1, 16, 16, generator=gen) * 60).to(torch.uint8)
        for i in range(n):
            x[i, :, 4 * y[i]: 4 * y[i] + 4, :] = 230
        return ImageSplit(x, y)

    return ImageDataset(name, ["top", "upper", "lower", "bottom"], split(n_train), split(n_test), source="tensors")


@pytest.fixture
def in_memory_registry(monkeypatch):
    import lgm.data

    monkeypatch.setattr(lgm.data, "IN_MEMORY", {})
    return lgm.data.IN_MEMORY


def test_an_in_memory_dataset_distills_and_evaluates_from_python(tmp_path, in_memory_registry):
    from lgm.distillation import distill
    from lgm.errors import UnknownNameError
    from lgm.evaluate import EvalConfig, evaluate_artifact

    ds = band_dataset()
    art = distill(ds, "toy_cnn", steps=3, augs=2, res=16, crop=14, device="cpu", progress=False, checkpoint_every=5)
    assert art.meta["dataset"] == "bands"
    cfg = EvalConfig(repeats=2, views=2, epochs=20, val_per_class=2, device="cpu", cache=False)
    with pytest.raises(UnknownNameError, match="unknown dataset 'bands'"):
        evaluate_artifact(art, cfg, log=lambda *_: None)
    given = evaluate_artifact(art, cfg, log=lambda *_: None, dataset=ds)["toy_cnn"]
    assert given["dataset"] == "bands" and given["images"] == 4 and len(given["top1"]["values"]) == 2
    # registered, it is found by the name the artifact records -- the same scores
    register_dataset(ds)
    assert load_dataset("bands") is ds
    by_name = evaluate_artifact(art, cfg, log=lambda *_: None)["toy_cnn"]
    assert by_name["top1"] == given["top1"] and by_name["nn1"] == given["nn1"]
    # the score is the test split's: a test split with shuffled labels scores differently
    wrong = ImageDataset("bands", ds.class_names, ds.train,
                         ImageSplit(ds.test.images, (ds.test.labels + 1) % 4), source="tensors")
    shuffled = evaluate_artifact(art, cfg, log=lambda *_: None, dataset=wrong)["toy_cnn"]
    assert shuffled["nn1"] != given["nn1"]


def test_register_dataset_rules(in_memory_registry):
    ds = band_dataset()
    register_dataset(ds)
    check_dataset_name("bands")
    again = band_dataset(n_train=8)
    register_dataset(again)  # a notebook cell run twice: the new one replaces the old
    assert load_dataset("bands") is again
    with pytest.raises(ValueError, match="names a dataset on disk"):
        register_dataset(band_dataset("fashion-mnist"))
    with pytest.raises(ValueError, match="names a dataset on disk"):
        register_dataset(band_dataset("folder:x"))
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("bands", lambda root: ds)
    bad = band_dataset("broken")
    bad.class_names = ["a", "a", "b", "c"]
    with pytest.raises(DatasetError, match="duplicate class names"):
        register_dataset(bad)
