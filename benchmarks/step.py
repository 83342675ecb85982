"""Distillation step benchmark: one LGM step against its floor, in the same process, on the same workload.

    python benchmarks/step.py --backbone effnet_lite0 --classes 10 --augs 4 --res 64 --crop 64 --real live cached
    python benchmarks/step.py --backbone timm:vit_tiny_patch16_224 --random-init --classes 10 --augs 4 \\
        --res 256 --crop 224 --real cached live --threads 2             # the CPU row of issue 23
    python benchmarks/step.py --backbone dinov2_vitb14 --random-init --classes 100 --augs 10 \\
        --res 256 --crop 224 --real cached --device cuda                # the ImageNet-100 setting
    python benchmarks/step.py --smoke [--out step.json]                 # seconds, CPU, toy backbone (the tests)

Every real-side mode times two things, alternately step by step so that a
busy machine slows both alike:

- lgm: ``distill_step`` as a distillation run calls it (sample a head, real
  gradient, render, augment, synthetic features with autograd, meta loss,
  backward, Adam);
- the floor: the least a frozen-backbone step can do on the same workload,
  the synthetic views' forward plus the backward to the input, plus (live
  real side) the real views' forward without a graph.

It prints the median times, lgm/floor, backbone images/s, peak memory,
FLOPs per step (torch.utils.flop_counter) and the achieved FLOP/s as a share
of a matmul measured in the same run; ``--out`` writes the same as JSON.
Real images are random tensors (the loader has its own benchmark,
benchmarks/loader.py); with --real cached the real side is a random feature
cache, as in a run with a feature cache. CPU rows are ratios of the same
run; absolute times belong to GPU rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

SMOKE = dict(backbone="toy_cnn", classes=4, augs=2, res=32, crop=28, steps=3, warmup=1, real=["cached", "live"],
             device="cpu", threads=1, matmul=256)


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def fmt(x: float, unit: str) -> str:
    """1.23 TFLOP or 45.6 GFLOP: readable on a CPU and on a GPU."""
    return f"{x / 1e12:.2f} T{unit}" if x >= 1e12 else f"{x / 1e9:.2f} G{unit}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="effnet_lite0")
    ap.add_argument("--random-init", action="store_true")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--ipc", type=int, default=1)
    ap.add_argument("--augs", type=int, default=4)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--chunk", type=int, default=0)
    ap.add_argument("--real", choices=("live", "cached"), nargs="+", default=["cached"],
                    help="real-feature mode(s); several are timed one after the other in the same run")
    ap.add_argument("--real-batch", type=int, default=0, help="0 = ipc*augs*classes")
    ap.add_argument("--steps", type=int, default=10, help="timed steps of lgm and of the floor, alternately")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto")
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--matmul", type=int, default=0, help="side of the reference matmul (0: 8192 on CUDA, 1024 else)")
    ap.add_argument("--out", help="also write the results as JSON to this file")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny CPU run of every code path (toy backbone, both real sides) in seconds")
    args = ap.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from lgm.backbones import load_backbone
    from lgm.config import DistillConfig
    from lgm.devices import autocast_context, resolve_device
    from lgm.distillation import speed_up_backbone

    device = resolve_device(args.device)
    cfg = DistillConfig(dataset="bench", backbone=args.backbone, ipc=args.ipc, augs=args.augs, res=args.res,
                        crop=args.crop, chunk=args.chunk, real_batch=args.real_batch,
                        amp=args.amp, device=str(device), random_init=args.random_init,
                        compile=args.compile).resolved()
    # As in a distillation run: the Backbone makes convnets channels-last, --compile torch.compiles it.
    bb = speed_up_backbone(load_backbone(args.backbone, device, random_init=args.random_init), cfg)
    n = args.classes * args.ipc
    n_real = cfg.real_batch or n * args.augs
    autocast = autocast_context(cfg, device)
    dtype = torch.bfloat16 if (device.type == "cuda" and args.amp != "off") or args.amp == "bf16" else torch.float32
    peak_rate = matmul_rate(device, dtype, args.matmul or (8192 if device.type == "cuda" else 1024))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device            {name}")
    print(f"matmul rate       {fmt(peak_rate, 'FLOP/s')} ({dtype}, measured in this run)")
    result = {"device": name, "matmul_flops_per_s": peak_rate, "dtype": str(dtype),
              "setting": {k: getattr(args, k) for k in ("backbone", "random_init", "classes", "ipc", "augs", "res",
                                                         "crop", "chunk", "steps", "warmup", "compile")}
              | {"real_batch": n_real, "amp": "bf16" if dtype == torch.bfloat16 else "off"},
              "modes": {}}
    for mode in args.real:
        result["modes"][mode] = run_mode(args, mode, cfg, bb, device, autocast, n, n_real, dtype, peak_rate)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


def floor_step(bb, device, autocast, n_views: int, n_real: int, crop: int, live: bool, gen: torch.Generator):
    """The least a frozen-backbone step does: synthetic forward + backward to the input (+ real forward if live)."""
    x_syn = torch.rand(n_views, 3, crop, crop, generator=gen).to(device).requires_grad_(True)
    x_real = torch.rand(n_real, 3, crop, crop, generator=gen).to(device) if live else None
    dz = torch.randn(n_views, bb.feature_dim, generator=gen).to(device)

    def step() -> None:
        if x_real is not None:
            with torch.no_grad(), autocast:
                bb.features(x_real)
        with autocast:
            z = bb.features(x_syn)
        z.float().backward(dz)
        x_syn.grad = None
    return step


def run_mode(args, mode, cfg, bb, device, autocast, n, n_real, dtype, peak_rate) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from lgm.augment import AugmentConfig, ViewAugmenter
    from lgm.data import ImageSplit
    from lgm.distillation import Generators, distill_step, make_optimizer
    from lgm.features import CachedReal, LiveReal
    from lgm.synthetic import make_synthetic

    gens = Generators.from_seed(0, device)
    syn = make_synthetic("pyramid", n, args.res, True, gens.init, cfg.grow_every).to(device)
    syn.grow_to(10**9, gens.init)  # full pyramid: the most expensive render
    labels = torch.arange(args.classes, device=device).repeat_interleave(args.ipc)
    opt = make_optimizer(list(syn.parameters()), cfg.lr)
    g = torch.Generator().manual_seed(0)
    if mode == "cached":
        feats = torch.randn(max(4 * n_real, 10_000), bb.feature_dim, generator=g).half()
        real = CachedReal(feats, torch.randint(0, args.classes, (feats.shape[0],), generator=g), device)
    else:
        imgs = torch.randint(0, 256, (max(n_real, 64), 3, args.res, args.res), generator=g, dtype=torch.uint8)
        split = ImageSplit(imgs, torch.randint(0, args.classes, (imgs.shape[0],), generator=g))
        real = LiveReal(split, args.res, args.crop, AugmentConfig(), bb, device, autocast)
    views = ViewAugmenter(AugmentConfig(), args.crop, device)
    floor = floor_step(bb, device, autocast, n * args.augs, n_real, args.crop, mode == "live", g)

    def step():
        return distill_step(syn, labels, args.classes, bb, real, opt, gens, cfg, views, autocast)

    for _ in range(args.warmup):
        step()
        floor()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, floor_times = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        float(loss)  # one host sync per step, only here, to time it
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        floor()
        sync(device)
        floor_times.append(time.perf_counter() - t0)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        floor()
    floor_flops = counter.get_total_flops()
    median, floor_median = statistics.median(times), statistics.median(floor_times)
    images = n * args.augs + (n_real if mode == "live" else 0)
    if device.type == "cuda":
        peak_mem, mem_kind = torch.cuda.max_memory_allocated(device) / 2**30, "GPU allocated"
    else:
        import resource

        peak_mem, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"
    print(f"setting           {args.backbone}{' (random init)' if args.random_init else ''}, C={args.classes}, "
          f"ipc={args.ipc}, A={args.augs}, res={args.res}, crop={args.crop}, chunk={args.chunk or 'all'}, "
          f"real={mode} ({n_real} per step), amp={'bf16' if dtype == torch.bfloat16 else 'off'}")
    print(f"step time         {median:.4f} s median of {args.steps} (min {min(times):.4f}, max {max(times):.4f})")
    print(f"floor time        {floor_median:.4f} s median of {args.steps} (min {min(floor_times):.4f}, "
          f"max {max(floor_times):.4f}): synthetic forward + backward to the input"
          + (" + real forward" if mode == "live" else ""))
    print(f"lgm/floor         {median / floor_median:.2f}x ({mode}, same run, alternating steps)")
    print(f"backbone images/s {images / median:.1f} ({images} per step)")
    print(f"peak memory       {peak_mem:.2f} GiB ({mem_kind})")
    print(f"FLOPs per step    {fmt(flops, 'FLOP')} (floor {fmt(floor_flops, 'FLOP')})")
    print(f"achieved          {fmt(flops / median, 'FLOP/s')} = {flops / median / peak_rate:.1%} of the "
          f"measured {dtype} matmul rate ({fmt(peak_rate, 'FLOP/s')})")
    return {"step_s": median, "step_s_all": times, "floor_s": floor_median, "floor_s_all": floor_times,
            "ratio": median / floor_median, "images_per_step": images, "images_per_s": images / median,
            "peak_memory_gib": peak_mem, "memory_kind": mem_kind, "flops": flops, "floor_flops": floor_flops,
            "flops_share_of_matmul": flops / median / peak_rate, "loss": float(loss)}


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
