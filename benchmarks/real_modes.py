"""Probe accuracy of the three real sides (live, cached, exact full gradient) on the offline default pair.

    .venv/bin/python benchmarks/real_modes.py --out runs/real_modes [--steps 800 --seeds 3 --threads 1]

Distills EfficientNet-Lite0 / Fashion-MNIST (1 image per class, 64 px seen
whole, A = 4, lr 1e-2) once per (real side, seed) and scores every set with
5 probes under the SPEC §6 protocol on the whole test split. Finished runs
are kept in OUT (results.json) and skipped when the script is re-run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

MODES = {
    "live": dict(real_features="live"),
    "cached": dict(real_features="cached", cache_per_class=1000, cache_views=2),
    "full": dict(real_features="cached", cache_per_class=1000, cache_views=2, real_gradient="full"),
}


def main() -> None:
    from lgm.backbones import load_backbone
    from lgm.data import load_dataset
    from lgm.distillation import distill
    from lgm.evaluate import EvalContext
    from lgm.feature_store import FeatureStore
    from lgm.probe import ProbeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/real_modes")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset("fashion-mnist")
    bb = load_backbone("effnet_lite0")
    ctx = EvalContext.build(ds, bb, 64, 64, torch.device("cpu"), ProbeConfig(views=100), store=FeatureStore())
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for seed in range(args.seeds):
        for mode, kw in MODES.items():
            key = f"{mode}/s{seed}"
            if key in results:
                continue
            t = time.time()
            r = distill(ds, bb, steps=args.steps, augs=4, res=64, crop=64, lr=1e-2, seed=seed, progress=False,
                        out=out / f"{mode}_s{seed}", **kw)
            scores = ctx.score_images(r.images, r.labels, [0, 1, 2, 3, 4])
            results[key] = {"top1": scores["top1"], "nn1": scores["nn1"], "seconds": time.time() - t}
            path.write_text(json.dumps(results, indent=1))
            print(f"{key}: top-1 {scores['top1']['mean'] * 100:.1f}, 1-NN {scores['nn1'] * 100:.1f} "
                  f"({time.time() - t:.0f} s)", flush=True)
    print("| real side | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | mean ± std |")
    for mode in MODES:
        accs = [results[f"{mode}/s{s}"]["top1"]["mean"] * 100 for s in range(args.seeds)]
        print(f"| {mode} | " + " | ".join(f"{a:.1f}" for a in accs)
              + f" | {statistics.fmean(accs):.1f} ± {statistics.pstdev(accs):.1f} |")


if __name__ == "__main__":
    main()
