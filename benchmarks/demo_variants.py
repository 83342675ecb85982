"""Probe accuracy of the demo's distillation with some settings changed (the README's "what we measured" rows).

    .venv/bin/python benchmarks/demo_variants.py NAME '{"init": "noise"}' [--out runs/variants --threads 1]
    python benchmarks/demo_variants.py smoke '{"init": "noise"}' --smoke    # seconds: toy backbone, tiny data

Runs the distillation of `lgm demo` (EfficientNet-Lite0 / Fashion-MNIST, 1
image per class, DEMO_DISTILL) with the given DistillConfig fields replaced,
then scores the distilled set alone with the demo's probe protocol (SPEC §6,
100 views per image, 5 probe seeds, the whole test split; early stopping on
the demo's validation images). Appends one JSON line per variant to
OUT/results.jsonl; a finished run directory is not redone.
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

# --smoke: the same code at toy sizes (toy backbone, a tiny Fashion-MNIST written to a temporary directory).
SMOKE_DISTILL = dict(backbone="toy_cnn", steps=4, res=16, crop=16, cache_per_class=10)
SMOKE_DEMO = dict(probe_views=4, val_per_class=2, repeats=2)


def main() -> None:
    from lgm.backbones import load_backbone
    from lgm.config import DistillConfig
    from lgm.data import load_dataset
    from lgm.demo import DEMO_DISTILL, DemoConfig
    from lgm.distillation import distill
    from lgm.evaluate import EvalContext
    from lgm.feature_store import FeatureStore
    from lgm.probe import ProbeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", help="run name (OUT/NAME holds the run directory)")
    ap.add_argument("overrides", help="JSON object of DistillConfig fields, e.g. '{\"augs\": 8}'")
    ap.add_argument("--out", default=None, help="default: runs/variants (--smoke: a temporary directory)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--smoke", action="store_true", help="toy sizes, seconds (the test suite runs this)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = json.loads(args.overrides)
    with contextlib.ExitStack() as stack:
        smoke, demo_fields, store = {}, {}, FeatureStore()
        if args.smoke:
            import _smoke

            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            smoke = SMOKE_DISTILL | {"data_root": _smoke.fashion_fixture(tmp / "data"), "device": "cpu"}
            demo_fields = SMOKE_DEMO
            args.out = args.out or str(tmp / "variants")
            store = FeatureStore(str(tmp / "cache"))
        cfg = DistillConfig(**{**DEMO_DISTILL, **smoke, **overrides, "progress": False})
        demo = DemoConfig(**demo_fields)
        out = Path(args.out or "runs/variants")
        ds = load_dataset(cfg.dataset, cfg.data_root)
        device = torch.device("cpu")
        bb = load_backbone(cfg.backbone, device)
        t0 = time.perf_counter()
        distilled = distill(ds, bb, cfg, out=out / args.name)
        probe = ProbeConfig(views=demo.probe_views, **({"epochs": 20} if args.smoke else {}))
        ctx = EvalContext.build(ds, bb, cfg.res, cfg.crop, device, probe, val_per_class=demo.val_per_class,
                                store=store)
        scores = ctx.score_images(distilled.images, distilled.labels, list(range(demo.repeats)))
        top1 = [v * 100 for v in scores["top1"]["values"]]
        row = {"name": args.name, "overrides": overrides, "top1": top1, "mean": statistics.fmean(top1),
               "pstdev": statistics.pstdev(top1), "nn1": scores["nn1"] * 100,
               "distill_seconds": distilled.meta.get("seconds"), "seconds": time.perf_counter() - t0}
        with open(out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{args.name}: top-1 {row['mean']:.1f} ± {row['pstdev']:.1f}, 1-NN {row['nn1']:.1f}")


if __name__ == "__main__":
    main()
