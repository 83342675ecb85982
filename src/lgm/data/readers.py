"""Readers for the photo datasets of the paper, each from its standard on-disk layout.

Every reader takes ``data_root`` (the directory holding datasets; None = not
given) and ``on_bad_image`` ("fail" | "skip"), checks the layout without
decoding images, and returns an :class:`ImageDataset` of :class:`FileSplit`s.
A dataset that is not where it should be, or whose layout is off, fails with
the expected layout and what was found instead.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import torch

from lgm.data.base import ImageDataset, carve_test_split
from lgm.data.images import (
    IMAGE_EXTENSIONS,
    OnBadImage,
    check_on_bad_image,
    class_dirs,
    file_split,
    list_image_files,
    scan_entries,
    scan_image_folder,
    warn,
)
from lgm.data.sources import SourceSpec
from lgm.errors import DatasetError, MissingResourceError


# ---------------------------------------------------------------------------------------------- helpers


def describe(path: Path, limit: int = 8) -> str:
    """What is at ``path``, for error messages: missing, a file, or a directory and some of its entries."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a directory"
    try:
        entries = sorted(os.listdir(path))
    except OSError as e:
        return f"{path} cannot be listed ({e})"
    if not entries:
        return f"{path} is empty"
    shown = ", ".join(e + ("/" if (path / e).is_dir() else "") for e in entries[:limit])
    more = f", ... ({len(entries)} entries)" if len(entries) > limit else ""
    return f"{path} holds: {shown}{more}"


def candidates(data_root: str | None, names: Sequence[str]) -> list[Path]:
    """DATA_ROOT/<name> for each accepted directory name, then DATA_ROOT itself."""
    if not data_root:
        return []
    root = Path(data_root).expanduser()
    return [root / n for n in names] + [root]


def not_found(title: str, searched: Sequence[Path], layout: str, data_root: str | None) -> MissingResourceError:
    if searched:
        seen = "\n  ".join(describe(p) for p in searched)
        where = f"Looked in:\n  {seen}"
    else:
        where = "No data root given: pass --data-root DIR (or set LGM_DATA_ROOT)."
    return MissingResourceError(f"{title} not found. {where}\nExpected layout (under the data root):\n{layout}")


def read_lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read {path}: {e}") from None


def dedupe_names(names: Sequence[str], keys: Sequence[str]) -> list[str]:
    """Readable class names made unique: a name shared by several classes gets its key appended.

    ImageNet has two 'crane' (bird, machine) and two 'maillot' synsets.
    """
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f"{n} ({k})" if counts[n] > 1 else n for n, k in zip(names, keys)]


def load_mat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise MissingResourceError(
            f"reading {path} (a MATLAB .mat file) needs scipy: pip install scipy (or `pip install lgm[data]`)"
        ) from None
    try:
        return loadmat(str(path))
    except Exception as e:  # scipy raises several unrelated types for a malformed file
        raise DatasetError(f"cannot read {path} as a MATLAB file: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------------- ImageNet


@lru_cache(maxsize=1)
def imagenet_class_table() -> tuple[list[str], dict[str, str]]:
    """The 1000 ImageNet-1k wnids in index order (sorted) and wnid -> readable name (first WordNet lemma).

    Shipped as package data (derived from WordNet / the ILSVRC2012 devkit synsets).
    """
    text = resources.files("lgm.data").joinpath("resources/imagenet1k_classes.tsv").read_text(encoding="utf-8")
    wnids, names = [], {}
    for line in text.splitlines():
        wnid, lemmas = line.split("\t", 1)
        wnids.append(wnid)
        names[wnid] = lemmas.split(",")[0].strip()
    return wnids, names


@lru_cache(maxsize=1)
def imagenet_subsets() -> dict[str, list[str]]:
    """Subset name -> wnids in label order (imagenet100 and the 10-class distillation subsets)."""
    pkg = resources.files("lgm.data").joinpath("resources")
    data = json.loads(pkg.joinpath("imagenet_subsets.json").read_text(encoding="utf-8"))
    out = {name: list(entry["wnids"]) for name, entry in data["subsets"].items()}
    # CMC's ImageNet-100 list (Tian et al., "Contrastive Multiview Coding", HobbitLong/CMC imagenet100.txt);
    # labels follow the sorted wnids, as an ImageFolder of those 100 folders would.
    out["imagenet100"] = sorted(pkg.joinpath("imagenet100.txt").read_text(encoding="utf-8").split())
    return out


IMAGENET_LAYOUT = """\
  imagenet/                      (also accepted: ILSVRC2012/, imagenet-1k/)
    train/<wnid>/*.JPEG          one folder per class, e.g. train/n01440764/n01440764_10026.JPEG
    val/<wnid>/*.JPEG            validation images sorted into the same class folders
    meta.bin                     optional: torchvision's ImageNet metadata (wnid -> class names)
  This is torchvision's ImageNet layout (after it parsed the devkit) and the plain ImageFolder one."""
IMAGENET_DIRS = ("imagenet", "ILSVRC2012", "imagenet-1k")


def _has_train_val(p: Path) -> bool:
    return (p / "train").is_dir() and (p / "val").is_dir()


def locate_imagenet(data_root: str | None) -> Path | None:
    return next((p for p in candidates(data_root, IMAGENET_DIRS) if _has_train_val(p)), None)


def imagenet_readable_names(root: Path, wnids: Sequence[str]) -> tuple[list[str], str]:
    """Readable names for ``wnids``: torchvision's meta.bin when present, else the shipped table, else the wnid."""
    meta = root / "meta.bin"
    table: dict[str, str] = {}
    origin = "lgm's ImageNet-1k table"
    if meta.is_file():
        try:
            wnid_to_classes = torch.load(meta, weights_only=True)[0]
            table = {w: (c[0] if isinstance(c, (tuple, list)) else str(c)) for w, c in wnid_to_classes.items()}
            origin = str(meta)
        except Exception as e:  # a foreign or damaged file: fall back, but say so
            warn(f"cannot read {meta} ({type(e).__name__}: {e}); using lgm's ImageNet class names")
    shipped = imagenet_class_table()[1]
    names = [table.get(w) or shipped.get(w) or w for w in wnids]
    return dedupe_names(names, wnids), origin


def _imagenet_split_dirs(root: Path, name: str) -> tuple[Path, Path]:
    train, val = root / "train", root / "val"
    if class_dirs(val) == [] and any(f.name.lower().endswith((".jpeg", ".jpg")) for f in os.scandir(val)):
        raise DatasetError(
            f"{name}: {val} holds images directly, not class folders. Sort the validation images into "
            "val/<wnid>/ folders (torchvision.datasets.ImageNet does this from ILSVRC2012_devkit_t12.tar.gz; "
            "so does the common valprep.sh script)."
        )
    return train, val


def load_imagenet_folders(name: str, root: Path, wnids: Sequence[str] | None, on_bad_image: OnBadImage,
                          source: str) -> ImageDataset:
    """ImageNet (or a class subset of it) from root/train/<wnid> and root/val/<wnid>."""
    train_dir, val_dir = _imagenet_split_dirs(root, name)
    train_classes, val_classes = class_dirs(train_dir), class_dirs(val_dir)
    if wnids is None:
        if set(train_classes) != set(val_classes):
            only_train = sorted(set(train_classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(train_classes))
            raise DatasetError(
                f"{name}: train and val class folders differ under {root}: "
                f"only in train/: {', '.join(only_train[:10]) or '-'}{' ...' if len(only_train) > 10 else ''}; "
                f"only in val/: {', '.join(only_val[:10]) or '-'}{' ...' if len(only_val) > 10 else ''}"
            )
        wnids = train_classes
        if not wnids:
            raise DatasetError(f"{name}: no class folders in {train_dir}.\nExpected layout:\n{IMAGENET_LAYOUT}")
    else:
        for split_dir, present in ((train_dir, train_classes), (val_dir, val_classes)):
            missing = [w for w in wnids if w not in set(present)]
            if missing:
                raise DatasetError(
                    f"{name}: {len(missing)} of its {len(wnids)} class folders are missing from {split_dir}: "
                    f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} (found {len(present)} class folders)"
                )
    class_names, names_from = imagenet_readable_names(root, wnids)
    splits = {}
    for split, d in (("train", train_dir), ("test", val_dir)):
        scan = scan_image_folder(d, wnids, name, split)
        splits[split] = file_split(scan, name, split, on_bad_image, class_names=class_names)
    meta = {"wnids": list(wnids), "class_names_from": names_from, "test_split": "ImageNet val"}
    return ImageDataset(name, class_names, splits["train"], splits["test"], source=source or str(root), meta=meta)


def load_imagenet(data_root: str | None = None, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    root = locate_imagenet(data_root)
    if root is None:
        raise not_found("ImageNet", candidates(data_root, IMAGENET_DIRS), IMAGENET_LAYOUT, data_root)
    return load_imagenet_folders("imagenet", root, None, on_bad_image, str(root))


SUBSET_ALIASES = {
    "imagenette": ("imagenette", "imagenette2", "imagenette2-320", "imagenette2-160"),
    "imagewoof": ("imagewoof", "imagewoof2", "imagewoof2-320", "imagewoof2-160"),
    "imagenet100": ("imagenet100", "imagenet-100", "ImageNet-100"),
}


def subset_dirs(name: str) -> tuple[str, ...]:
    return SUBSET_ALIASES.get(name, (name,))


def subset_layout(name: str) -> str:
    return (f"  {name}/train/<wnid>/*, {name}/val/<wnid>/*   a copy holding (at least) its class folders"
            + (f" (also accepted: {', '.join(subset_dirs(name)[1:])}/)" if len(subset_dirs(name)) > 1 else "")
            + "\n  or the full ImageNet, which it is cut from:\n" + IMAGENET_LAYOUT)


def locate_subset(name: str, data_root: str | None) -> Path | None:
    wnids = imagenet_subsets()[name]
    for p in candidates(data_root, subset_dirs(name))[:-1]:
        if _has_train_val(p) and (p / "train" / wnids[0]).is_dir():
            return p
    return locate_imagenet(data_root)


def subset_loader(name: str) -> Callable[..., ImageDataset]:
    def load(data_root: str | None = None, on_bad_image: OnBadImage = "fail") -> ImageDataset:
        root = locate_subset(name, data_root)
        if root is None:
            searched = candidates(data_root, subset_dirs(name)[:1] + IMAGENET_DIRS)
            raise not_found(name, searched, subset_layout(name), data_root)
        ds = load_imagenet_folders(name, root, imagenet_subsets()[name], on_bad_image, str(root))
        return ds

    load.__name__ = f"load_{name.replace('-', '_')}"
    load.__doc__ = f"The ImageNet class subset {name!r} (train = its ImageNet train images, test = its val images)."
    return load


# ---------------------------------------------------------------------------------------------- Flowers-102

FLOWERS_LAYOUT = """\
  flowers-102/                   torchvision's Flowers102 layout (the official files)
    jpg/image_00001.jpg ... jpg/image_08189.jpg
    imagelabels.mat              'labels': class 1..102 of every image
    setid.mat                    'trnid', 'valid', 'tstid': 1-based image ids of each split"""


def locate_flowers(data_root: str | None) -> Path | None:
    return next((p for p in candidates(data_root, ("flowers-102", "flowers102"))
                 if (p / "jpg").is_dir() and (p / "imagelabels.mat").is_file() and (p / "setid.mat").is_file()), None)


def flowers_class_names() -> list[str]:
    try:
        from torchvision.datasets import Flowers102

        names = list(getattr(Flowers102, "classes", []))
    except ImportError:
        names = []
    return names if len(names) == 102 else [f"flower {i}" for i in range(1, 103)]


def load_flowers102(data_root: str | None = None, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    root = locate_flowers(data_root)
    if root is None:
        raise not_found("Flowers-102", candidates(data_root, ("flowers-102", "flowers102")), FLOWERS_LAYOUT, data_root)
    labels_mat, setid = load_mat(root / "imagelabels.mat"), load_mat(root / "setid.mat")
    for path, mat, keys in ((root / "imagelabels.mat", labels_mat, ("labels",)),
                            (root / "setid.mat", setid, ("trnid", "valid", "tstid"))):
        missing = [k for k in keys if k not in mat]
        if missing:
            raise DatasetError(f"Flowers-102: {path} lacks {', '.join(missing)} (holds {', '.join(k for k in mat if not k.startswith('__'))})")
    labels = [int(v) - 1 for v in labels_mat["labels"].reshape(-1)]
    if not labels or min(labels) < 0 or max(labels) > 101:
        raise DatasetError(f"Flowers-102: {root / 'imagelabels.mat'} labels outside 1..102")
    class_names = flowers_class_names()
    splits = {}
    for split, key in (("train", "trnid"), ("val", "valid"), ("test", "tstid")):
        ids = [int(v) for v in setid[key].reshape(-1)]
        bad_ids = [i for i in ids if not 1 <= i <= len(labels)]
        if bad_ids:
            raise DatasetError(f"Flowers-102: {root / 'setid.mat'} '{key}' holds image ids outside 1..{len(labels)}: {bad_ids[:5]}")
        scan = scan_entries((root / "jpg" / f"image_{i:05d}.jpg", labels[i - 1], None) for i in ids)
        splits[split] = file_split(scan, "flowers102", split, on_bad_image, class_names=class_names)
    return ImageDataset("flowers102", class_names, splits["train"], splits["test"], source=str(root),
                        meta={"val_split": "official (setid.mat valid)"}, val=splits["val"])


# ---------------------------------------------------------------------------------------------- Food-101

FOOD_LAYOUT = """\
  food-101/                      torchvision's Food101 layout (the official archive)
    images/<class>/<id>.jpg      e.g. images/apple_pie/1005649.jpg
    meta/train.json, meta/test.json   {class: ["<class>/<id>", ...]} (or meta/train.txt, meta/test.txt)
    meta/classes.txt, meta/labels.txt optional: class keys and their readable names, line by line"""


def locate_food(data_root: str | None) -> Path | None:
    return next((p for p in candidates(data_root, ("food-101", "food101"))
                 if (p / "images").is_dir() and (p / "meta").is_dir()), None)


def _food_split(root: Path, split: str) -> dict[str, list[str]]:
    js, txt = root / "meta" / f"{split}.json", root / "meta" / f"{split}.txt"
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise DatasetError(f"Food-101: cannot read {js}: {e}") from None
        if not isinstance(data, dict):
            raise DatasetError(f"Food-101: {js} should map class -> list of '<class>/<id>', holds a {type(data).__name__}")
        return {str(k): [str(x) for x in v] for k, v in data.items()}
    if txt.is_file():
        out: dict[str, list[str]] = {}
        for line in read_lines(txt):
            out.setdefault(line.split("/", 1)[0], []).append(line)
        return out
    raise DatasetError(f"Food-101: neither {js} nor {txt} exists ({describe(root / 'meta')})")


def load_food101(data_root: str | None = None, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    root = locate_food(data_root)
    if root is None:
        raise not_found("Food-101", candidates(data_root, ("food-101", "food101")), FOOD_LAYOUT, data_root)
    train, test = _food_split(root, "train"), _food_split(root, "test")
    if set(train) != set(test):
        raise DatasetError(f"Food-101: train and test classes differ: only in train: {sorted(set(train) - set(test))[:10]}, "
                           f"only in test: {sorted(set(test) - set(train))[:10]}")
    keys = sorted(train)
    names = [k.replace("_", " ") for k in keys]
    classes_txt, labels_txt = root / "meta" / "classes.txt", root / "meta" / "labels.txt"
    if classes_txt.is_file() and labels_txt.is_file():
        pairs = dict(zip(read_lines(classes_txt), read_lines(labels_txt)))
        names = [pairs.get(k, n) for k, n in zip(keys, names)]
    index = {k: i for i, k in enumerate(keys)}
    splits = {}
    for split, listing in (("train", train), ("test", test)):
        entries = []
        for cls, items in sorted(listing.items()):
            for rel in items:
                if rel.split("/", 1)[0] != cls:
                    raise DatasetError(f"Food-101: meta/{split}.json lists {rel!r} under class {cls!r}")
                entries.append((root / "images" / f"{rel}.jpg", index[cls], None))
        splits[split] = file_split(scan_entries(entries), "food101", split, on_bad_image, class_names=names)
    return ImageDataset("food101", names, splits["train"], splits["test"], source=str(root), meta={"keys": keys})


# ---------------------------------------------------------------------------------------------- CUB-200-2011

CUB_LAYOUT = """\
  CUB_200_2011/                  the official tarball, extracted (also accepted: cub200/CUB_200_2011/, cub/CUB_200_2011/)
    images/<NNN.Class_Name>/<file>.jpg
    images.txt                   '<image id> <path under images/>'
    image_class_labels.txt       '<image id> <class id 1..200>'
    train_test_split.txt         '<image id> <1 = train, 0 = test>'
    classes.txt                  '<class id> <NNN.Class_Name>'"""
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")
CUB_DIRS = ("CUB_200_2011", "cub200/CUB_200_2011", "cub/CUB_200_2011", "CUB-200-2011")


def locate_cub(data_root: str | None) -> Path | None:
    return next((p for p in candidates(data_root, CUB_DIRS)
                 if (p / "images").is_dir() and all((p / f).is_file() for f in CUB_FILES)), None)


def _id_table(path: Path, what: str) -> dict[int, str]:
    out = {}
    for n, line in enumerate(read_lines(path), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{what}: {path} line {n}: expected '<id> <value>', got {line!r}")
        if int(parts[0]) in out:
            raise DatasetError(f"{what}: {path} line {n}: id {parts[0]} appears twice")
        out[int(parts[0])] = parts[1]
    return out


def cub_readable(class_dir: str) -> str:
    """'001.Black_footed_Albatross' -> 'Black footed Albatross'."""
    return class_dir.split(".", 1)[-1].replace("_", " ")


def load_cub(data_root: str | None = None, on_bad_image: OnBadImage = "fail", images_root: Path | None = None,
             name: str = "cub200") -> ImageDataset:
    root = locate_cub(data_root)
    if root is None:
        raise not_found("CUB-200-2011", candidates(data_root, CUB_DIRS), CUB_LAYOUT, data_root)
    images = _id_table(root / "images.txt", "CUB-200-2011")
    labels = _id_table(root / "image_class_labels.txt", "CUB-200-2011")
    is_train = _id_table(root / "train_test_split.txt", "CUB-200-2011")
    classes = _id_table(root / "classes.txt", "CUB-200-2011")
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise DatasetError(f"CUB-200-2011: {root / 'classes.txt'} class ids are not 1..{len(class_ids)}")
    for path, table in ((root / "image_class_labels.txt", labels), (root / "train_test_split.txt", is_train)):
        if set(table) != set(images):
            diff = sorted(set(images) ^ set(table))
            raise DatasetError(f"CUB-200-2011: {path} and images.txt list different image ids, e.g. {diff[:5]}")
    dirs = [classes[i] for i in class_ids]
    names = [cub_readable(d) for d in dirs]
    entries: dict[str, list] = {"train": [], "test": []}
    for image_id in sorted(images):
        rel = images[image_id]
        label = int(labels[image_id]) - 1
        if not 0 <= label < len(dirs):
            raise DatasetError(f"CUB-200-2011: image {image_id} has class {labels[image_id]}, outside 1..{len(dirs)}")
        # The class is stated twice (folder and label file); disagreeing sources mean a broken copy.
        if rel.split("/", 1)[0] != dirs[label]:
            raise DatasetError(f"CUB-200-2011: image {image_id} ({rel}) is labelled {dirs[label]} by image_class_labels.txt")
        flag = is_train[image_id].strip()
        if flag not in ("0", "1"):
            raise DatasetError(f"CUB-200-2011: train_test_split.txt gives image {image_id} the flag {flag!r} (expected 0 or 1)")
        entries["train" if flag == "1" else "test"].append((root / "images" / rel, label, None))
    splits = {s: file_split(scan_entries(e), name, s, on_bad_image, class_names=names) for s, e in entries.items()}
    return ImageDataset(name, names, splits["train"], splits["test"], source=str(root), meta={"class_dirs": dirs})


# ---------------------------------------------------------------------------------------------- Stanford Dogs

DOGS_LAYOUT = """\
  stanford-dogs/                 the official images.tar + lists.tar, extracted (also accepted: StanfordDogs/, dogs/)
    Images/<wnid>-<Breed>/<wnid>_<n>.jpg     e.g. Images/n02085620-Chihuahua/n02085620_10074.jpg
    train_list.mat, test_list.mat            official lists ('file_list' paths under Images/, 'labels' 1..120); need scipy
    or train_list.txt, test_list.txt         one path under Images/ per line (the label is its folder)"""
DOGS_DIRS = ("stanford-dogs", "StanfordDogs", "stanford_dogs", "dogs")


def locate_dogs(data_root: str | None) -> Path | None:
    def ok(p: Path) -> bool:
        return (p / "Images").is_dir() and any((p / f"train_list.{e}").is_file() for e in ("mat", "txt"))

    return next((p for p in candidates(data_root, DOGS_DIRS) if ok(p)), None)


def dogs_readable(folder: str) -> str:
    """'n02085620-Chihuahua' -> 'Chihuahua', 'n02085782-Japanese_spaniel' -> 'Japanese spaniel'."""
    return folder.split("-", 1)[-1].replace("_", " ")


def _dogs_list(root: Path, split: str) -> list[tuple[str, int | None]]:
    """(path under Images/, official 0-based label or None) of a split, from the .mat list or the .txt one."""
    mat, txt = root / f"{split}_list.mat", root / f"{split}_list.txt"
    if mat.is_file():
        m = load_mat(mat)
        if "file_list" not in m or "labels" not in m:
            raise DatasetError(f"Stanford Dogs: {mat} lacks 'file_list' or 'labels' (holds {', '.join(k for k in m if not k.startswith('__'))})")
        files = [str(f.reshape(-1)[0]) for f in m["file_list"].reshape(-1)]
        labels = [int(v) - 1 for v in m["labels"].reshape(-1)]
        if len(files) != len(labels):
            raise DatasetError(f"Stanford Dogs: {mat} holds {len(files)} files but {len(labels)} labels")
        return list(zip(files, labels))
    if txt.is_file():
        return [(line, None) for line in read_lines(txt)]
    raise DatasetError(f"Stanford Dogs: neither {mat} nor {txt} exists ({describe(root)})")


def load_stanford_dogs(data_root: str | None = None, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    root = locate_dogs(data_root)
    if root is None:
        raise not_found("Stanford Dogs", candidates(data_root, DOGS_DIRS), DOGS_LAYOUT, data_root)
    folders = class_dirs(root / "Images")
    if not folders:
        raise DatasetError(f"Stanford Dogs: no breed folders in {root / 'Images'}")
    index = {f: i for i, f in enumerate(folders)}
    names = dedupe_names([dogs_readable(f) for f in folders], folders)
    splits = {}
    for split in ("train", "test"):
        entries = []
        for rel, official in _dogs_list(root, split):
            folder = rel.split("/", 1)[0]
            if folder not in index:
                raise DatasetError(f"Stanford Dogs: {split} list names {rel!r}, whose folder is not in {root / 'Images'}")
            # The official label is the index of the breed folder in sorted order; a list disagreeing with
            # its own folder structure would train on wrong labels, so it is refused.
            if official is not None and official != index[folder]:
                raise DatasetError(f"Stanford Dogs: {split}_list.mat labels {rel!r} as class {official + 1}, "
                                   f"but its folder is class {index[folder] + 1} ({folder})")
            entries.append((root / "Images" / rel, index[folder], None))
        splits[split] = file_split(scan_entries(entries), "stanford-dogs", split, on_bad_image, class_names=names)
    counts = torch.bincount(splits["train"].labels, minlength=len(folders))
    empty = [names[i] for i in range(len(folders)) if counts[i] == 0]
    if empty:
        raise DatasetError(f"Stanford Dogs: breeds without training images in train_list: {', '.join(empty[:10])}")
    return ImageDataset("stanford-dogs", names, splits["train"], splits["test"], source=str(root),
                        meta={"wnids": [f.split("-", 1)[0] for f in folders]})


# ---------------------------------------------------------------------------------------------- ImageFolder datasets

ARTBENCH_LAYOUT = """\
  artbench-10/                   the ImageFolder release (also accepted: artbench-10-imagefolder-split/, artbench10/)
    train/<style>/*.jpg          10 styles: art_nouveau, baroque, expressionism, impressionism, post_impressionism,
    test/<style>/*.jpg           realism, renaissance, romanticism, surrealism, ukiyo_e"""
ARTBENCH_DIRS = ("artbench-10", "artbench-10-imagefolder-split", "artbench10")
ARTBENCH_STYLES = ("art_nouveau", "baroque", "expressionism", "impressionism", "post_impressionism", "realism",
                   "renaissance", "romanticism", "surrealism", "ukiyo_e")

FOLDER_LAYOUT = """\
  <path>/train/<class>/*.<image extension>
  <path>/test/<class>/*   (or <path>/val/<class>/*)   the same class folders
or a single class tree, from which a seeded stratified test split is carved:
  <path>/<class>/*.<image extension>   (folder,test=0.2,seed=0:<path> are the defaults)"""


def _folder_test_dir(root: Path) -> Path | None:
    return next((root / d for d in ("test", "val") if (root / d).is_dir()), None)


def load_image_folder(root: Path, name: str, on_bad_image: OnBadImage = "fail", readable: Callable[[str], str] | None = None,
                      expected_classes: Sequence[str] | None = None, channels: int = 3) -> ImageDataset:
    """A dataset from root/train/<class>/ and root/test/<class>/ (or val/): classes are the sorted folder names."""
    train_dir, test_dir = root / "train", _folder_test_dir(root)
    if not train_dir.is_dir() or test_dir is None:
        raise MissingResourceError(f"{name}: expected train/ and test/ (or val/) class folders in {root}; "
                                   f"{describe(root)}\nExpected layout:\n{FOLDER_LAYOUT}")
    train_classes, test_classes = class_dirs(train_dir), class_dirs(test_dir)
    if not train_classes:
        raise DatasetError(f"{name}: no class folders in {train_dir} ({describe(train_dir)})")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DatasetError(f"{name}: train and {test_dir.name} classes differ: only in {train_dir}: "
                           f"{', '.join(only_train) or '-'}; only in {test_dir}: {', '.join(only_test) or '-'}")
    if expected_classes is not None and set(train_classes) != set(expected_classes):
        raise DatasetError(f"{name}: expected the class folders {', '.join(expected_classes)} in {train_dir}, "
                           f"found {', '.join(train_classes)}")
    names = [readable(c) for c in train_classes] if readable else list(train_classes)
    splits = {}
    for split, d in (("train", train_dir), ("test", test_dir)):
        scan = scan_image_folder(d, train_classes, name, split)
        if scan.ignored:
            warn(f"{name} {split}: ignored {scan.ignored} file(s) without an image extension under {d}")
        splits[split] = file_split(scan, name, split, on_bad_image, channels=channels, class_names=names)
    return ImageDataset(name, names, splits["train"], splits["test"], source=str(root),
                        meta={"class_dirs": list(train_classes), "test_dir": test_dir.name})


def locate_artbench(data_root: str | None) -> Path | None:
    return next((p for p in candidates(data_root, ARTBENCH_DIRS)
                 if (p / "train" / ARTBENCH_STYLES[0]).is_dir() and _folder_test_dir(p) is not None), None)


def load_artbench(data_root: str | None = None, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    root = locate_artbench(data_root)
    if root is None:
        raise not_found("ArtBench-10", candidates(data_root, ARTBENCH_DIRS), ARTBENCH_LAYOUT, data_root)
    return load_image_folder(root, "artbench10", on_bad_image, readable=lambda s: s.replace("_", " "),
                             expected_classes=ARTBENCH_STYLES)


def load_folder(name: str, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    """``folder[,test=F|N][,seed=S]:<path>``: an ImageFolder pair of splits, or a single class tree.

    A pair (``<path>/train/<class>/`` with ``<path>/test/<class>/`` or ``val/``)
    is read as is. A single tree (``<path>/<class>/``, no train/) gets a test
    split carved per class: ``test`` is a fraction (default 0.2) or a number
    of images per class, ``seed`` its seed (default 0); see :func:`load_class_tree`.
    """
    spec = SourceSpec.parse(name)
    path = spec.path
    if not path.is_dir():
        raise MissingResourceError(f"{name}: {describe(path)}\nExpected layout:\n{FOLDER_LAYOUT}")
    check_on_bad_image(on_bad_image)
    split_dirs = [d for d in ("train", "test", "val") if (path / d).is_dir()]
    if "train" in split_dirs and len(split_dirs) > 1:
        spec.refuse_carve_options(f"{path} has its own train/ and {split_dirs[1]}/ splits")
        return load_image_folder(path, name, on_bad_image)
    if split_dirs:
        raise MissingResourceError(
            f"{name}: {path} has {' and '.join(d + '/' for d in split_dirs)} but not both train/ and test/ (or val/); "
            f"{describe(path)}\nExpected layout:\n{FOLDER_LAYOUT}")
    test, seed = spec.carve_settings()
    return load_class_tree(path, name, test, seed, on_bad_image)


def load_class_tree(root: Path, name: str, test: float | int, seed: int, on_bad_image: OnBadImage = "fail",
                    channels: int = 3) -> ImageDataset:
    """``root/<class>/**`` images, with a seeded stratified test split carved per class.

    The split is drawn over every file with an image extension, bad ones
    included, in sorted relative-path order, so it is the same on every machine
    and does not move when ``on_bad_image="skip"`` leaves a bad file out (the
    file leaves the side it was drawn for). ``meta["split"]`` records it.
    """
    classes = class_dirs(root)
    if not classes:
        raise DatasetError(f"{name}: no class folders in {root} ({describe(root)})\nExpected layout:\n{FOLDER_LAYOUT}")
    ids: list[str] = []
    labels: list[int] = []
    empty, ignored = [], 0
    for label, cls in enumerate(classes):
        files, bad, ig = list_image_files(root / cls)
        ignored += ig
        rel = sorted(Path(p).relative_to(root).as_posix() for p in [*map(str, files), *(b.path for b in bad)])
        if not rel:
            empty.append(cls)
        ids += rel
        labels += [label] * len(rel)
    if empty:
        raise DatasetError(f"{name}: class folder(s) with no image files under {root}: "
                           f"{', '.join(empty[:20])}{' ...' if len(empty) > 20 else ''} "
                           f"(image extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if ignored:
        warn(f"{name}: ignored {ignored} file(s) without an image extension under {root}")
    label_t = torch.tensor(labels, dtype=torch.long)
    train_idx, test_idx, record = carve_test_split(label_t, classes, ids, test, seed, name)
    splits = {}
    for split, idx in (("train", train_idx), ("test", test_idx)):
        scan = scan_entries((root / ids[i], labels[i], None) for i in idx.tolist())
        splits[split] = file_split(scan, name, split, on_bad_image, channels=channels, class_names=classes)
    how = f"{test:.0%} per class" if isinstance(test, float) else f"{test} per class"
    meta = {"class_dirs": list(classes), "test_split": f"carved: {how}, stratified, seed {seed}", "split": record}
    return ImageDataset(name, list(classes), splits["train"], splits["test"], source=str(root), meta=meta)


# ---------------------------------------------------------------------------------------------- Waterbirds

WATERBIRDS_LAYOUT = """\
  waterbirds_v1.0/               the WILDS layout (also accepted: waterbirds/, waterbird_complete95_forest2water2/)
    metadata.csv                 columns img_filename, y (0 landbird, 1 waterbird), split (0 train, 1 val, 2 test),
                                 place (0 land, 1 water background)
    <NNN.Class_Name>/<file>.jpg  paths as in img_filename"""
WATERBIRDS_DIRS = ("waterbirds_v1.0", "waterbirds", "waterbird_complete95_forest2water2")
WATERBIRDS_CLASSES = ["landbird", "waterbird"]
WATERBIRDS_GROUPS = ["landbird on land", "landbird on water", "waterbird on land", "waterbird on water"]


def locate_waterbirds(data_root: str | None) -> Path | None:
    return next((p for p in candidates(data_root, WATERBIRDS_DIRS) if (p / "metadata.csv").is_file()), None)


def load_waterbirds(data_root: str | None = None, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    root = locate_waterbirds(data_root)
    if root is None:
        raise not_found("Waterbirds", candidates(data_root, WATERBIRDS_DIRS), WATERBIRDS_LAYOUT, data_root)
    path = root / "metadata.csv"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"Waterbirds: cannot read {path}: {e}") from None
    need = ("img_filename", "y", "split", "place")
    header = list(rows[0]) if rows else []
    missing = [c for c in need if c not in header]
    if missing:
        raise DatasetError(f"Waterbirds: {path} lacks column(s) {', '.join(missing)} (has {', '.join(header) or 'no rows'})")
    entries: dict[str, list] = {"train": [], "val": [], "test": []}
    split_names = {"0": "train", "1": "val", "2": "test"}
    for n, row in enumerate(rows, 2):
        y, place, split = row["y"].strip(), row["place"].strip(), row["split"].strip()
        if y not in ("0", "1") or place not in ("0", "1") or split not in split_names:
            raise DatasetError(f"Waterbirds: {path} line {n}: y={y!r}, place={place!r}, split={split!r} "
                               "(expected y and place in 0/1, split in 0/1/2)")
        # group = 2*y + place, i.e. the class crossed with the background (the groups of worst-group accuracy)
        entries[split_names[split]].append((root / row["img_filename"].strip(), int(y), 2 * int(y) + int(place)))
    splits = {s: file_split(scan_entries(e), "waterbirds", s, on_bad_image, class_names=WATERBIRDS_CLASSES)
              for s, e in entries.items()}
    return ImageDataset("waterbirds", list(WATERBIRDS_CLASSES), splits["train"], splits["test"], source=str(root),
                        meta={"group_names": list(WATERBIRDS_GROUPS), "val_split": "official (metadata.csv split 1)"},
                        val=splits["val"])


# ---------------------------------------------------------------------------------------------- Spawrious

SPAWRIOUS_LAYOUT = """\
  spawrious224/                  the official release (o2o_hard archive or the entire dataset)
    0/<location>/<class>/*.png   locations: beach, desert, dirt, jungle, mountain, snow
    1/<location>/<class>/*.png   classes: bulldog, corgi, dachshund, labrador"""
SPAWRIOUS_DIRS = ("spawrious224", "spawrious/spawrious224", "spawrious")
SPAWRIOUS_CLASSES = ["bulldog", "corgi", "dachshund", "labrador"]
SPAWRIOUS_LOCATIONS = ["beach", "desert", "dirt", "jungle", "mountain", "snow"]


@dataclass(frozen=True)
class SpawriousBenchmark:
    """One-to-one benchmark as the official code builds it (spawrious/torch.py, build_combination)."""

    spurious: tuple[str, str, str, str]  # training background of bulldog, dachshund, labrador, corgi
    test: tuple[str, str, str, str]  # test background of the same classes
    filler: str  # background of the small all-class share of training

    TOTAL = 3168  # images per (folder, location, class) in the release

    def train_entries(self) -> list[tuple[int, str, tuple[str, ...], int]]:
        """(folder 0/1, location, classes, limit) of the training set: 97% / 87% spurious, the rest filler."""
        counts = (int(0.97 * self.TOTAL), int(0.87 * self.TOTAL))
        order = ("bulldog", "dachshund", "labrador", "corgi")
        out = []
        for folder in (0, 1):
            for cls, loc in zip(order, self.spurious):
                out.append((folder, loc, (cls,), counts[folder]))
            out.append((folder, self.filler, order, self.TOTAL - counts[folder]))
        return out

    def test_entries(self) -> list[tuple[int, str, tuple[str, ...], int | None]]:
        order = ("bulldog", "dachshund", "labrador", "corgi")
        return [(folder, loc, (cls,), None) for folder in (0, 1) for cls, loc in zip(order, self.test)]


SPAWRIOUS_O2O_HARD = SpawriousBenchmark(spurious=("jungle", "mountain", "snow", "desert"),
                                        test=("mountain", "snow", "desert", "jungle"), filler="beach")


def locate_spawrious(data_root: str | None) -> Path | None:
    return next((p for p in candidates(data_root, SPAWRIOUS_DIRS) if (p / "0").is_dir() and (p / "1").is_dir()), None)


def load_spawrious_o2o_hard(data_root: str | None = None, on_bad_image: OnBadImage = "fail") -> ImageDataset:
    """Spawrious O2O-hard: 4 dog breeds whose training background is spurious; groups are class x location.

    The official code takes the first ``limit`` files of each folder in
    ``os.listdir`` order, which depends on the filesystem; lgm takes them in
    sorted order, so the selection is the same on every machine.
    """
    root = locate_spawrious(data_root)
    if root is None:
        raise not_found("Spawrious", candidates(data_root, SPAWRIOUS_DIRS), SPAWRIOUS_LAYOUT, data_root)
    bench = SPAWRIOUS_O2O_HARD
    splits = {}
    for split, plan in (("train", bench.train_entries()), ("test", bench.test_entries())):
        entries = []
        for folder, loc, classes, limit in plan:
            for cls in classes:
                d = root / str(folder) / loc / cls
                if not d.is_dir():
                    raise DatasetError(f"Spawrious o2o_hard {split}: missing folder {d} ({describe(d.parent)})")
                files = sorted(f for f in os.listdir(d) if f.lower().endswith((".png", ".jpg", ".jpeg")))
                if not files:
                    raise DatasetError(f"Spawrious o2o_hard {split}: no images in {d}")
                label = SPAWRIOUS_CLASSES.index(cls)
                group = label * len(SPAWRIOUS_LOCATIONS) + SPAWRIOUS_LOCATIONS.index(loc)
                entries += [(d / f, label, group) for f in files[:limit]]
        splits[split] = file_split(scan_entries(entries), "spawrious-o2o-hard", split, on_bad_image,
                                   class_names=SPAWRIOUS_CLASSES)
    groups = [f"{c} on {loc}" for c in SPAWRIOUS_CLASSES for loc in SPAWRIOUS_LOCATIONS]
    return ImageDataset("spawrious-o2o-hard", list(SPAWRIOUS_CLASSES), splits["train"], splits["test"], source=str(root),
                        meta={"group_names": groups, "locations": list(SPAWRIOUS_LOCATIONS), "benchmark": "o2o_hard"})
