"""Helpers that write tiny images and dataset layouts for the dataset tests.

Every fixture image is a flat colour that encodes its class (``class_value``),
so a test can read the label back from the pixels instead of trusting the
reader's own bookkeeping.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def class_value(c: int) -> int:
    """Grey level of fixture images of class ``c`` (far apart, so JPEG error cannot blur them)."""
    return 12 + 20 * c


def label_from_pixels(x) -> list[int]:
    """Classes read back from flat fixture images (float in [0, 1], N x C x H x W)."""
    means = (x.float().mean(dim=(1, 2, 3)) * 255.0).tolist()
    return [round((m - 12) / 20) for m in means]


def write_image(path: Path, value: int | tuple = 128, size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(value, int) and mode == "RGB":
        value = (value, value, value)
    im = Image.new(mode, size, value)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower(), None)
    if fmt == "JPEG":
        im.save(path, fmt, quality=95, subsampling=0)
    else:
        im.save(path, fmt)
    return path


def write_class_image(path: Path, c: int) -> Path:
    return write_image(path, class_value(c))


def write_image_folder(root: Path, classes: list[str], per_class: int, ext: str = ".jpg",
                       class_index: dict[str, int] | None = None) -> None:
    """root/<class>/<class>_<i><ext>, each coloured by ``class_index[class]`` (default: position)."""
    for pos, cls in enumerate(classes):
        c = class_index[cls] if class_index else pos
        for i in range(per_class):
            write_class_image(root / cls / f"{cls}_{i}{ext}", c)


def truncated_jpeg(path: Path) -> Path:
    """A JPEG cut in half: PIL opens it but fails while decoding."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, "JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
