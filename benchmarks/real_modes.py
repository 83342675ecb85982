"""Probe accuracy of the three real sides (live, cached, exact full gradient) on the offline default pair.

    .venv/bin/python benchmarks/real_modes.py --out runs/real_modes [--steps 800 --seeds 3 --threads 1]
    python benchmarks/real_modes.py --smoke      # seconds: toy backbone, tiny data, a temporary OUT

Distills EfficientNet-Lite0 / Fashion-MNIST (1 image per class, 64 px seen
whole, A = 4, lr 1e-2) once per (real side, seed) and scores every set with
5 probes under the SPEC §6 protocol on the whole test split. Finished runs
are kept in OUT (results.json) and skipped when the script is re-run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

MODES = {
    "live": dict(real_features="live"),
    "cached": dict(real_features="cached", cache_per_class=1000, cache_views=2),
    "full": dict(real_features="cached", cache_per_class=1000, cache_views=2, real_gradient="full"),
}
# --smoke: the same runs at toy sizes (tiny Fashion-MNIST in a temporary directory, toy backbone).
SMOKE = dict(steps=3, seeds=1, backbone="toy_cnn", res=16, probe_views=4, probe_epochs=20, val_per_class=2,
             cache_per_class=10)


def main() -> None:
    from lgm.backbones import load_backbone
    from lgm.data import load_dataset
    from lgm.feature_store import FeatureStore
    from lgm.probe import ProbeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="default: runs/real_modes (--smoke: a temporary directory)")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, seconds (the test suite runs this)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with contextlib.ExitStack() as stack:
        data_root, backbone, res, modes = None, "effnet_lite0", 64, MODES
        probe, val_per_class, store = ProbeConfig(views=100), 100, FeatureStore()
        if args.smoke:
            import _smoke

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            data_root = _smoke.fashion_fixture(f"{tmp}/data")
            args.steps, args.seeds, backbone, res = SMOKE["steps"], SMOKE["seeds"], SMOKE["backbone"], SMOKE["res"]
            probe = ProbeConfig(views=SMOKE["probe_views"], epochs=SMOKE["probe_epochs"])
            val_per_class, store = SMOKE["val_per_class"], FeatureStore(f"{tmp}/cache")
            modes = {m: kw | {"device": "cpu"} | ({"cache_per_class": SMOKE["cache_per_class"]}
                                                  if "cache_per_class" in kw else {}) for m, kw in MODES.items()}
            args.out = args.out or f"{tmp}/real_modes"
        run_all(args, load_dataset("fashion-mnist", data_root), load_backbone(backbone), res, modes, probe,
                val_per_class, store)


def run_all(args, ds, bb, res: int, modes: dict, probe, val_per_class: int, store) -> None:
    from lgm.distillation import distill
    from lgm.evaluate import EvalContext

    out = Path(args.out or "runs/real_modes")
    out.mkdir(parents=True, exist_ok=True)
    ctx = EvalContext.build(ds, bb, res, res, torch.device("cpu"), probe, val_per_class=val_per_class, store=store)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for seed in range(args.seeds):
        for mode, kw in modes.items():
            key = f"{mode}/s{seed}"
            if key in results:
                continue
            t = time.time()
            r = distill(ds, bb, steps=args.steps, augs=4, res=res, crop=res, lr=1e-2, seed=seed, progress=False,
                        out=out / f"{mode}_s{seed}", **kw)
            scores = ctx.score_images(r.images, r.labels, [0, 1, 2, 3, 4])
            results[key] = {"top1": scores["top1"], "nn1": scores["nn1"], "seconds": time.time() - t}
            path.write_text(json.dumps(results, indent=1))
            print(f"{key}: top-1 {scores['top1']['mean'] * 100:.1f}, 1-NN {scores['nn1'] * 100:.1f} "
                  f"({time.time() - t:.0f} s)", flush=True)
    print("| real side | " + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | mean ± std |")
    for mode in modes:
        accs = [results[f"{mode}/s{s}"]["top1"]["mean"] * 100 for s in range(args.seeds)]
        print(f"| {mode} | " + " | ".join(f"{a:.1f}" for a in accs)
              + f" | {statistics.fmean(accs):.1f} ± {statistics.pstdev(accs):.1f} |")

if __name__ == "__main__":
    main()
