"""Throughput of frozen-backbone feature extraction: batch size, memory layout, CPU micro-batches.

Feature extraction dominates a fresh evaluation (the full training set's
center-view features); this measures images per second of
``Backbone.features`` under no_grad for several caller batch sizes, and of one
forward+backward to the input (the distillation's synthetic side), in three
setups: NCHW weights with whole batches (lgm before channels-last), channels-last
with whole batches, and lgm's default for convnets (channels-last, CPU batches
split to about ``CPU_BATCH_PIXELS`` input pixels).

    .venv/bin/python benchmarks/features.py [--backbone effnet_lite0 --res 128 --threads 2]
    python benchmarks/features.py --smoke          # seconds: toy backbone, 32 px, small batches
"""

from __future__ import annotations

import argparse
import time

import torch


def rate(fn, images: int, repeats: int) -> float:
    fn()  # warm-up: allocator, oneDNN primitive cache
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    return images * repeats / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="effnet_lite0")
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--batches", default="50,100,250,500")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--smoke", action="store_true", help="toy backbone, 32 px, batches 4 and 8 (the test suite)")
    args = ap.parse_args()
    if args.smoke:
        args.backbone, args.res, args.batches, args.repeats, args.device = "toy_cnn", 32, "4,8", 1, "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)

    from lgm.backbones import base, load_backbone

    device = torch.device(args.device)
    backbone = load_backbone(args.backbone).to(device)
    gen = torch.Generator().manual_seed(0)
    print(f"{args.backbone} at {args.res} px on {device}, {torch.get_num_threads()} threads")
    default_pixels = base.CPU_BATCH_PIXELS
    for name, layout, pixels in (("NCHW", torch.contiguous_format, 2**62),
                                 ("channels-last", torch.channels_last, 2**62),
                                 ("lgm default", torch.channels_last, default_pixels)):
        backbone.model.to(memory_format=layout)
        base.CPU_BATCH_PIXELS = pixels
        for batch in (int(b) for b in args.batches.split(",")):
            x = torch.rand(batch, 3, args.res, args.res, generator=gen).to(device)

            def forward(x=x):
                with torch.no_grad():
                    backbone.features(x)
            print(f"  {name:13s} no_grad batch {batch:4d}: {rate(forward, batch, args.repeats):7.1f} img/s")
        x = torch.rand(40, 3, args.res, args.res, generator=gen).to(device).requires_grad_(True)

        def forward_backward():
            backbone.features(x).square().sum().backward()
        print(f"  {name:13s} fwd+bwd to input, 40 images: {rate(forward_backward, 40, args.repeats):7.1f} img/s")


if __name__ == "__main__":
    main()
