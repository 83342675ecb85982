"""How noisy is the real head gradient for a given real batch size?

Prints the mean cosine between the head gradients of two disjoint real
batches (same random head), for several batch sizes, on the offline pair.
With 1 image per class the paper's real batch is ipc*A*C images; for 10
classes that is 40-100 images, which this script shows to be mostly noise.

    .venv/bin/python benchmarks/real_gradient_noise.py [--res 64 --crop 56 --pool 4000]
    python benchmarks/real_gradient_noise.py --smoke    # seconds: toy backbone, tiny data
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile

import torch

from lgm.augment import AugmentConfig, augment
from lgm.backbones import load_backbone
from lgm.data import load_dataset
from lgm.matching import head_gradient, meta_loss, sample_head


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--backbone", default="effnet_lite0")
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--crop", type=int, default=56)
    ap.add_argument("--pool", type=int, default=4000)
    ap.add_argument("--heads", type=int, default=20)
    ap.add_argument("--sizes", default="40,100,400,1000", help="real batch sizes (and pool/2) to compare")
    ap.add_argument("--smoke", action="store_true", help="toy backbone on a tiny Fashion-MNIST (the test suite)")
    args = ap.parse_args()
    with contextlib.ExitStack() as stack:
        data_root = None
        if args.smoke:
            import _smoke

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            data_root = _smoke.fashion_fixture(f"{tmp}/data")
            args.backbone, args.res, args.crop = _smoke.BACKBONE, 16, 14
            args.pool, args.heads, args.sizes = 200, 3, "40"
        ds = load_dataset(args.dataset, data_root)
    bb = load_backbone(args.backbone)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(ds.train), generator=g)[: args.pool]
    with torch.no_grad():
        z = torch.cat([bb.features(augment(ds.train.load(idx[i:i + 500], args.res), args.crop, AugmentConfig(), g))
                       for i in range(0, len(idx), 500)])
    y = ds.train.labels[idx]
    print(f"{args.backbone} on {args.dataset}, {args.res}->{args.crop} px, pool {len(idx)} augmented images")
    print("real batch | cos(g_batch1, g_batch2), mean over heads")
    # Two disjoint batches of n need 2n images of the pool.
    sizes = sorted({n for n in map(int, args.sizes.split(",")) if 2 * n <= len(idx)} | {len(idx) // 2})
    for n in sizes:
        cos = []
        for _ in range(args.heads):
            w, b = sample_head(ds.num_classes, bb.feature_dim, g)
            p = torch.randperm(len(idx), generator=g)
            g1 = head_gradient(z[p[:n]], y[p[:n]], w, b)
            g2 = head_gradient(z[p[n:2 * n]], y[p[n:2 * n]], w, b)
            cos.append(1 - float(meta_loss(g1, g2)))
        print(f"{n:10d} | {sum(cos) / len(cos):.3f}")

if __name__ == "__main__":
    main()
