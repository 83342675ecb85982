"""Datasets users bring: a single class-folder tree (carved test split)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lgm.data import BadImageError, check_dataset_name, check_split, load_dataset
from lgm.errors import DatasetError, MissingResourceError
from tests.dataset_fixtures import label_from_pixels, write_class_image

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
