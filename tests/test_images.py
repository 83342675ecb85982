"""Decoding image files: every PIL mode read by its meaning, file-backed splits, and bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from lgm.data import BadImageError, FileSplit, load_dataset
from lgm.data.images import decode_image
from lgm.errors import DatasetError

from tests.dataset_fixtures import class_value, label_from_pixels, truncated_jpeg, write_class_image, write_image


def pixel(path, channels=3, size=4):
    """The decoded centre pixel (channel values) of a flat test image."""
    return decode_image(path, size, channels)[:, size // 2, size // 2].tolist()


# ---------------------------------------------------------------------------------------------- modes


def test_grey_becomes_rgb_by_replication_and_rgb_becomes_luma(tmp_path):
    assert pixel(write_image(tmp_path / "l.png", 77, mode="L")) == [77, 77, 77]
    # ITU-R 601-2 luma of pure red: 0.299 * 255 = 76.2
    assert pixel(write_image(tmp_path / "red.png", (255, 0, 0)), channels=1) == [76]
    assert pixel(write_image(tmp_path / "one.png", 1, mode="1")) == [255, 255, 255]


def test_cmyk_is_converted_not_reinterpreted(tmp_path):
    cyan = tmp_path / "cyan.tif"
    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(cyan)
    assert pixel(cyan) == [0, 255, 255]
    black = tmp_path / "k.tif"
    Image.new("CMYK", (8, 8), (0, 0, 0, 255)).save(black)
    assert pixel(black) == [0, 0, 0]


def test_alpha_is_composited_on_white(tmp_path):
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (200, 0, 0, 0)).save(clear)
    assert pixel(clear) == [255, 255, 255]
    opaque = tmp_path / "opaque.png"
    Image.new("RGBA", (8, 8), (200, 10, 0, 255)).save(opaque)
    assert pixel(opaque) == [200, 10, 0]
    half = tmp_path / "half.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 128)).save(half)
    assert all(abs(v - 127) <= 1 for v in pixel(half))  # 128/255 black over white
    la = tmp_path / "la.png"
    Image.new("LA", (8, 8), (0, 0)).save(la)
    assert pixel(la, channels=1) == [255]


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (8, 8), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    plain = tmp_path / "p.png"
    im.save(plain)
    assert pixel(plain) == [10, 200, 30]
    transparent = tmp_path / "pt.png"
    im.save(transparent, transparency=1)
    assert pixel(transparent) == [255, 255, 255]


def test_sixteen_bit_grey_keeps_its_range(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((8, 8), 0x8000, dtype=np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    assert pixel(path) == [128, 128, 128]  # not clipped to 255


def test_float_pixels_are_refused(tmp_path):
    path = tmp_path / "f.tif"
    Image.new("F", (8, 8), 0.5).save(path)
    split = FileSplit([str(path)], [0])
    with pytest.raises(BadImageError, match="floating-point"):
        split.load(torch.tensor([0]), 4)


def test_non_square_images_are_center_cropped(tmp_path):
    arr = np.zeros((8, 24, 3), dtype=np.uint8)
    arr[:, :8] = (255, 0, 0)
    arr[:, 8:16] = (0, 255, 0)
    arr[:, 16:] = (0, 0, 255)
    path = tmp_path / "wide.png"
    Image.fromarray(arr).save(path)
    out = decode_image(path, 8)
    assert out.shape == (3, 8, 8)
    assert out[1].min() == 255 and out[0].max() == 0 and out[2].max() == 0  # only the green middle third


def test_large_jpeg_decodes_to_the_requested_size(tmp_path):
    path = write_image(tmp_path / "big.jpg", (30, 60, 90), size=(640, 480))
    out = decode_image(path, 32)
    assert out.shape == (3, 32, 32)
    assert np.abs(out.reshape(3, -1).mean(1) - np.array([30, 60, 90])).max() < 3


# ---------------------------------------------------------------------------------------------- file splits


def make_split(tmp_path, n_per_class=3, classes=3, **kw):
    paths, labels = [], []
    for c in range(classes):
        for i in range(n_per_class):
            paths.append(str(write_class_image(tmp_path / f"c{c}" / f"{i}.jpg", c)))
            labels.append(c)
    return FileSplit(paths, labels, **kw)


def test_load_subset_materialize_agree_and_keep_labels(tmp_path):
    split = make_split(tmp_path, workers=2)
    idx = torch.tensor([8, 0, 4, 4])
    x = split.load(idx, 8)
    assert x.shape == (4, 3, 8, 8) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert label_from_pixels(x) == split.labels[idx].tolist() == [2, 0, 1, 1]
    single = FileSplit(list(split.paths), split.labels, workers=1).load(idx, 8)
    assert torch.equal(x, single)  # thread pool and serial decoding give the same pixels
    mem = split.materialize(8)
    assert mem.images.dtype == torch.uint8 and mem.images.shape == (9, 3, 8, 8)
    assert torch.allclose(mem.load(idx, 8), x)
    sub = split.subset(torch.tensor([3, 4, 5]))
    assert sub.labels.tolist() == [1, 1, 1] and label_from_pixels(sub.load(torch.arange(3), 8)) == [1, 1, 1]


def test_groups_follow_subsets_and_materialize(tmp_path):
    split = make_split(tmp_path, groups=[0, 1, 2, 3, 4, 5, 6, 7, 8])
    sub = split.subset(torch.tensor([7, 2]))
    assert sub.groups.tolist() == [7, 2]
    assert sub.materialize(4).groups.tolist() == [7, 2]


def corrupt_split(tmp_path, on_bad_image):
    good = [write_class_image(tmp_path / "a" / f"{i}.jpg", i % 2) for i in range(4)]
    garbage = tmp_path / "a" / "garbage.jpg"
    garbage.write_bytes(os.urandom(300))
    cut = truncated_jpeg(tmp_path / "a" / "cut.jpg")
    paths = [good[0], garbage, good[1], cut, good[2], good[3]]
    labels = [0, 0, 1, 1, 0, 1]
    return FileSplit([str(p) for p in paths], labels, on_bad_image=on_bad_image, name="fixture train")


def test_corrupt_and_truncated_files_fail_with_their_names(tmp_path):
    split = corrupt_split(tmp_path, "fail")
    with pytest.raises(BadImageError) as e:
        split.materialize(8)
    msg = str(e.value)
    assert "2 bad image file(s)" in msg and "garbage.jpg" in msg and "cut.jpg" in msg and "truncated" in msg
    assert "--on-bad-image skip" in msg
    with pytest.raises(BadImageError, match="garbage.jpg"):
        split.load(torch.tensor([0, 1]), 8)
    with pytest.raises(BadImageError, match="cut.jpg"):
        split.verify()


def test_skip_drops_bad_files_with_their_labels(tmp_path, capsys):
    split = corrupt_split(tmp_path, "skip")
    mem = split.materialize(8)
    assert mem.labels.tolist() == [0, 1, 0, 1]
    assert label_from_pixels(mem.load(torch.arange(4), 8)) == [0, 1, 0, 1]
    err = capsys.readouterr().err
    assert "skipped 2 bad image(s)" in err and "garbage.jpg" in err
    verified = split.verify()
    assert len(verified) == 4 and verified.labels.tolist() == [0, 1, 0, 1]
    # In a batch, a bad row is refilled with an image of the same class: row and label still agree.
    x = split.load(torch.tensor([1, 3]), 8)
    assert label_from_pixels(x) == [0, 1]


def test_materialize_refuses_what_does_not_fit(tmp_path):
    split = make_split(tmp_path, n_per_class=1)
    with pytest.raises(DatasetError, match="GiB of memory"):
        split.materialize(64, max_bytes=1000)


# ---------------------------------------------------------------------------------------------- folders with bad input


def test_scan_finds_empty_and_unreadable_files(tmp_path):
    for split in ("train", "test"):
        for c, cls in enumerate(("cat", "dog")):
            for i in range(2):
                write_class_image(tmp_path / split / cls / f"{i}.jpg", c)
    (tmp_path / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (tmp_path / "train" / "dog" / "link.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(BadImageError) as e:
        load_dataset(f"folder:{tmp_path}")
    msg = str(e.value)
    assert "2 bad image file(s)" in msg
    assert "empty.jpg: empty file" in msg and "link.jpg: missing file" in msg
    ds = load_dataset(f"folder:{tmp_path}", on_bad_image="skip")
    assert ds.train.labels.tolist() == [0, 0, 1, 1]
    assert label_from_pixels(ds.train.load(torch.arange(4), 8)) == [0, 0, 1, 1]


def test_empty_class_and_class_mismatch_are_errors(tmp_path):
    root = tmp_path / "a"
    write_class_image(root / "train" / "cat" / "0.jpg", 0)
    write_class_image(root / "test" / "cat" / "0.jpg", 0)
    (root / "train" / "dog").mkdir()
    (root / "test" / "dog").mkdir()
    (root / "train" / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no image files under .*train: dog"):
        load_dataset(f"folder:{root}")
    root = tmp_path / "b"
    write_class_image(root / "train" / "cat" / "0.jpg", 0)
    write_class_image(root / "train" / "dog" / "0.jpg", 1)
    write_class_image(root / "val" / "cat" / "0.jpg", 0)
    write_class_image(root / "val" / "cow" / "0.jpg", 1)
    with pytest.raises(DatasetError, match=r"only in .*train: dog; only in .*val: cow"):
        load_dataset(f"folder:{root}")


def test_on_bad_image_value_is_checked(tmp_path):
    with pytest.raises(DatasetError, match="on_bad_image must be one of fail, skip"):
        load_dataset("digits", on_bad_image="ignore")


def test_class_values_are_distinct():
    # The fixtures' label read-back relies on this.
    assert len({class_value(c) for c in range(12)}) == 12 and class_value(11) < 255


# ---------------------------------------------------------------------------------------------- batch loader


def test_batch_loader_balanced_deterministic_and_labelled(tmp_path):
    from lgm.data.loader import BatchLoader

    split = make_split(tmp_path, n_per_class=4, classes=3, workers=2)
    with BatchLoader(split, 7, 8, sampling="balanced", seed=5, prefetch=2) as loader:
        batches = [next(loader) for _ in range(3)]
    for x, y in batches:
        assert x.shape == (7, 3, 8, 8) and label_from_pixels(x) == y.tolist()
        counts = sorted(torch.bincount(y, minlength=3).tolist())
        assert counts == [2, 2, 3]  # 7 images over 3 classes
    with BatchLoader(split, 7, 8, sampling="balanced", seed=5, prefetch=1) as again:
        assert all(torch.equal(y, next(again)[1]) for _, y in batches)  # prefetch depth does not change the draw
    with BatchLoader(split, 5, 8, sampling="uniform", seed=0) as uniform:
        x, y = next(uniform)
        assert x.shape == (5, 3, 8, 8) and label_from_pixels(x) == y.tolist()
