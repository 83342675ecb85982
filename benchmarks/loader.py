"""How fast lgm's loader delivers real images, against what a distillation step asks for.

Writes an ImageFolder of JPEGs the size of ImageNet photos (500x375, smooth
random content so the files compress like photos) into a temporary directory,
then measures images/s for:

  1. decoding one at a time (FileSplit, 1 worker),
  2. decoding in the thread pool (FileSplit, N workers),
  3. BatchLoader (class-balanced batches, decoded ahead off the main thread),
  4. materialize() once into a uint8 cache, then batches from that cache.

A distillation step of the paper draws ipc * A * C real images (A augmented
views of the synthetic set, C classes); the table at the end gives the loader
time per step for a few (ipc, A, C).

    python benchmarks/loader.py [--classes 10 --per-class 40 --res 256 --workers 2 --device cpu]
    python benchmarks/loader.py --smoke       # seconds: 2 classes x 4 JPEGs, 32 px, CPU
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lgm.data import load_dataset
from lgm.data.loader import BatchLoader


def write_jpegs(root: Path, classes: int, per_class: int, size=(500, 375)) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 1)):
        for c in range(classes):
            d = root / split / f"class_{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                coarse = rng.integers(0, 255, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
                im = Image.fromarray(coarse).resize(size, Image.BICUBIC)
                noise = rng.integers(-12, 12, (size[1], size[0], 3))
                im = Image.fromarray(np.clip(np.asarray(im).astype(int) + noise, 0, 255).astype(np.uint8))
                im.save(d / f"{i:05d}.jpg", "JPEG", quality=90)


def rate(fn, n_images: int, repeat: int = 3) -> float:
    fn()  # warm-up (pool start, page cache)
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return repeat * n_images / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=100, help="images per batch (default: ipc*A*C = 1*10*10)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dir", default=None, help="write the JPEGs here instead of a temporary directory")
    ap.add_argument("--smoke", action="store_true", help="2 classes x 4 JPEGs at 32 px on the CPU (the test suite)")
    args = ap.parse_args()
    if args.smoke:
        args.classes, args.per_class, args.res, args.workers, args.batch, args.device = 2, 4, 32, 2, 8, "cpu"

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir or tmp) / "jpegs"
        t = time.perf_counter()
        if not (root / "train").is_dir():
            write_jpegs(root, args.classes, args.per_class)
        ds = load_dataset(f"folder:{root}")
        train = ds.train
        n = len(train)
        print(f"{n} JPEGs of 500x375 in {args.classes} classes (written/scanned in {time.perf_counter() - t:.1f} s); "
              f"res {args.res}, device {args.device}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
        batch = min(args.batch, n)
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:batch]

        train.workers = 1
        serial = rate(lambda: train.load(idx, args.res, args.device), batch)
        train.workers = args.workers
        pooled = rate(lambda: train.load(idx, args.res, args.device), batch)

        loader = BatchLoader(train, batch, args.res, args.device, sampling="balanced", seed=0, prefetch=2)
        next(loader)
        t = time.perf_counter()
        steps = 6
        for _ in range(steps):
            x, y = next(loader)
        if x.is_cuda:
            torch.cuda.synchronize()
        streamed = steps * batch / (time.perf_counter() - t)
        loader.close()

        t = time.perf_counter()
        cache = train.materialize(args.res)
        decode_all = n / (time.perf_counter() - t)
        cache_dev = cache.to(args.device)
        idx_dev = idx.to(args.device)

        def from_cache():
            out = cache_dev.load(idx_dev, args.res, args.device)
            if out.is_cuda:
                torch.cuda.synchronize()

        cached = rate(from_cache, batch, repeat=20)

    rows = [("decode, 1 worker", serial), (f"decode, {args.workers} worker threads", pooled),
            (f"BatchLoader (balanced, prefetch 2, {args.workers} workers)", streamed),
            ("materialize() once (decode everything)", decode_all), ("batches from the uint8 cache", cached)]
    print(f"\n{'loader':55s} {'images/s':>10s}")
    for name, r in rows:
        print(f"{name:55s} {r:10.0f}")
    print(f"\nloader time per distillation step (real batch = ipc*A*C images), res {args.res}:")
    print(f"{'ipc':>4s} {'A':>4s} {'C':>5s} {'images':>7s} {'streamed (s)':>13s} {'from cache (s)':>15s}")
    for ipc, a, c in ((1, 10, 10), (1, 10, 100), (10, 10, 10), (1, 10, 1000)):
        need = ipc * a * c
        print(f"{ipc:4d} {a:4d} {c:5d} {need:7d} {need / streamed:13.3f} {need / cached:15.4f}")


if __name__ == "__main__":
    sys.exit(main())
