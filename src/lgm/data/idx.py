"""Readers for MNIST-style IDX files (Fashion-MNIST)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from lgm.data.base import ImageDataset, ImageSplit
from lgm.errors import LgmError, MissingResourceError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (uint8 payload), from a plain or gzipped file."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise LgmError(f"cannot read IDX file {path}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise LgmError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims)) if dims else 0
    if len(data) - header != expected:
        raise LgmError(f"{path} is truncated or padded: header says {dims} ({expected} bytes), file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_dirs(data_root: str | None) -> list[Path]:
    dirs = []
    if data_root:
        dirs.append(Path(data_root) / "fashion-mnist")
        dirs.append(Path(data_root))
    dirs.append(DEBIAN_FASHION_DIR)
    return dirs


def load_fashion_mnist(data_root: str | None = None) -> ImageDataset:
    searched = fashion_mnist_dirs(data_root)
    for directory in searched:
        paths = {k: _find(directory, stem) for k, stem in FASHION_FILES.items()}
        if all(p is not None for p in paths.values()):
            break
    else:
        names = ", ".join(f"{s}[.gz]" for s in FASHION_FILES.values())
        raise MissingResourceError(
            "Fashion-MNIST not found. Looked in: " + ", ".join(str(d) for d in searched) + ". "
            "Install it with `apt-get install dataset-fashion-mnist` (Debian; files land in "
            f"{DEBIAN_FASHION_DIR}), or put {names} in DATA_ROOT/fashion-mnist/ and pass --data-root DATA_ROOT "
            "(or set LGM_DATA_ROOT)."
        )
    splits = {}
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"])
        labels = read_idx(paths[f"{split}_labels"])
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise LgmError(
                f"Fashion-MNIST {split}: {paths[f'{split}_images']} holds {images.shape}, "
                f"{paths[f'{split}_labels']} holds {labels.shape}; expected N x 28 x 28 images and N labels"
            )
        if labels.size and labels.max() >= len(FASHION_CLASSES):
            raise LgmError(f"{paths[f'{split}_labels']}: label {labels.max()} outside 0..9")
        splits[split] = ImageSplit(torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    return ImageDataset("fashion-mnist", list(FASHION_CLASSES), splits["train"], splits["test"], source=str(directory))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz); used for fixtures."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def write_band_fashion_mnist(root: str | Path, n_train: int = 200, n_test: int = 50, seed: int = 0) -> Path:
    """A tiny stand-in Fashion-MNIST in its real IDX layout under ``root``/fashion-mnist; returns ``root``.

    Class c is a bright horizontal band at rows 2c..2c+8 over noise: something probes and distillation can
    learn in seconds (tests and the benchmarks' smoke modes).
    """
    d = Path(root) / "fashion-mnist"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = (np.arange(n) % 10).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i in range(n):
            x[i, 2 * y[i]: 2 * y[i] + 8, :] = 220
        write_idx(d / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(d / f"{prefix}-labels-idx1-ubyte.gz", y)
    return Path(root)
