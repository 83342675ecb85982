"""Time of one full probe evaluation (features + all repeats), cold and warm feature store.

Cold: test and validation features are computed and stored; warm: they are
read back, so only the artifact's augmented views and the probes remain.

    .venv/bin/python benchmarks/eval_time.py [ARTIFACT] [--repeats 5 --threads 2]
    python benchmarks/eval_time.py --smoke          # seconds: toy backbone, tiny data, short probes

Without ARTIFACT a 1-image-per-class random real selection of the offline
pair (EfficientNet-Lite0 / Fashion-MNIST at 64 px) is evaluated.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact", nargs="?")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--smoke", action="store_true",
                    help="toy backbone on a tiny Fashion-MNIST, 4 views, 20 epochs (the test suite runs this)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from lgm.artifacts import DistilledSet
    from lgm.selection import random_indices
    from lgm.data import load_dataset
    from lgm.evaluate import EvalConfig, evaluate_artifact

    with contextlib.ExitStack() as stack:
        data_root, backbone, res, probe = None, "effnet_lite0", 64, {}
        if args.smoke:
            import _smoke

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            data_root, backbone, res = _smoke.fashion_fixture(f"{tmp}/data"), _smoke.BACKBONE, 16
            probe = dict(views=4, epochs=20, val_per_class=2)
            args.device = "cpu"
        if args.artifact:
            artifact = DistilledSet.load(args.artifact)
        else:
            ds = load_dataset("fashion-mnist", data_root)
            idx = random_indices(ds.train.labels, 1, seed=0)
            artifact = DistilledSet(ds.train.load(idx, res), ds.train.labels[idx], list(ds.class_names),
                                    {"dataset": ds.name, "backbone": backbone, "config": {"res": res, "crop": res}})
        cache = stack.enter_context(tempfile.TemporaryDirectory())
        cfg = EvalConfig(repeats=args.repeats, device=args.device, cache_dir=cache, data_root=data_root, **probe)
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            r = evaluate_artifact(artifact, cfg, log=lambda m: None)
            seconds = time.perf_counter() - t0
            name, res_ = next(iter(r.items()))
            print(f"{label}: {seconds:6.1f} s  ({name}, {args.repeats} repeats, top-1 "
                  f"{res_['top1']['mean'] * 100:.1f} ± {res_['top1']['std'] * 100:.1f}, threads "
                  f"{torch.get_num_threads()})")

if __name__ == "__main__":
    main()
