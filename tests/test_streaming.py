"""The live real side streams file-backed splits too large to decode into memory, with the same numbers."""

import contextlib

import numpy as np
import torch
from PIL import Image

from lgm.augment import AugmentConfig
from lgm.backbones import load_backbone
from lgm.data import load_dataset
from lgm.features import LiveReal
from lgm.matching import sample_head


def write_noise_folder(root, classes=3, per_class=6, size=20):
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(d / f"{i}.png")


def test_streamed_live_real_side_equals_the_decoded_one(tmp_path, monkeypatch):
    write_noise_folder(tmp_path / "d")
    ds = load_dataset(f"folder:{tmp_path / 'd'}")
    bb = load_backbone("toy_cnn")
    cpu, aug = torch.device("cpu"), AugmentConfig()
    decoded = LiveReal(ds.train, 16, 14, aug, bb, cpu, contextlib.nullcontext())
    monkeypatch.setenv("LGM_MAX_DECODED_BYTES", "100")  # the split no longer fits: stream it
    streamed = LiveReal(ds.train, 16, 14, aug, bb, cpu, contextlib.nullcontext())
    assert streamed.streaming and not decoded.streaming

    heads = torch.Generator().manual_seed(0)
    g_dec, g_str = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(3):
        w, b = sample_head(3, bb.feature_dim, heads)
        assert torch.equal(decoded.gradient(w, b, 8, g_dec), streamed.gradient(w, b, 8, g_str))
    assert streamed._prefetch.hits == 2, "steps after the first take the batch decoded in the background"
    # Someone else drawing from the generator between steps: the prefetched batch is not used.
    torch.rand(1, generator=g_str)
    torch.rand(1, generator=g_dec)
    w, b = sample_head(3, bb.feature_dim, heads)
    assert torch.equal(decoded.gradient(w, b, 8, g_dec), streamed.gradient(w, b, 8, g_str))
    assert streamed._prefetch.hits == 2
