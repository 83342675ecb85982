"""The README's joint-vs-single table from what benchmarks/joint_table.sh wrote.

    .venv/bin/python benchmarks/joint_table_summary.py [runs/joint-table]
    python benchmarks/joint_table_summary.py --smoke    # seconds: the table of toy inputs made by lgm itself

Reads OUT/matrix/crossmodel.json (every distilled set on every evaluating
backbone) and OUT/baselines-<backbone>/eval/crossmodel.json (the real
baselines chosen on each evaluating backbone) and prints one markdown row per
set: top-1 on each evaluating backbone as mean ± population std over
distillation seeds (each seed's value is already the mean over its probe
seeds), and the mean over the evaluating backbones. Same-model cells are bold.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path


def cell(values: list[float], bold: bool = False) -> str:
    text = f"{statistics.fmean(values) * 100:.1f}"
    if len(values) > 1:
        text += f" ± {statistics.pstdev(values) * 100:.1f}"
    return f"**{text}**" if bold else text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="runs/joint-table")
    ap.add_argument("--smoke", action="store_true",
                    help="summarize what lgm's crossmodel writes for toy sets (toy backbone, tiny data; the tests)")
    args = ap.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            print(summarize(smoke_inputs(Path(tmp))))
    else:
        print(summarize(Path(args.out)))


def smoke_inputs(root: Path) -> Path:
    """What joint_table.sh leaves in OUT, at toy sizes: sets named as it names them, lgm's own crossmodel files.

    The "sets" are random real selections labelled as single and joint runs of 2 seeds; they are evaluated on
    the toy backbone by ``crossmodel_matrix``, the baselines are ``make_baselines`` of the toy backbone.
    """
    import _smoke

    from lgm.artifacts import DistilledSet
    from lgm.baselines import BaselineConfig, make_baselines
    from lgm.selection import random_indices
    from lgm.data import load_dataset
    from lgm.evaluate import EvalConfig, crossmodel_matrix

    data_root, bb = _smoke.fashion_fixture(root / "data"), _smoke.BACKBONE
    ds = load_dataset("fashion-mnist", data_root)
    out = root / "joint-table"
    sources = []
    for seed in (0, 1):
        for name, with_ in (("single", bb), ("joint-all", [bb, "other_backbone"])):
            idx = random_indices(ds.train.labels, 1, seed=seed)
            art = DistilledSet(ds.train.load(idx, 16), ds.train.labels[idx], list(ds.class_names),
                               {"dataset": ds.name, "backbone": with_, "config": {"res": 16, "crop": 16}})
            sources.append(str(art.save(out / f"{name}_s{seed}" / "distilled").parent))
    cfg = EvalConfig(backbone=(bb,), repeats=1, views=2, epochs=5, val_per_class=2, device="cpu",
                     data_root=data_root, cache_dir=str(root / "cache"))
    crossmodel_matrix(tuple(sources), cfg, out / "matrix", log=lambda m: None)
    baselines = make_baselines(BaselineConfig(dataset="fashion-mnist", backbone=bb, res=16, crop=16, random_seeds=2,
                                              val_per_class=2, device="cpu", data_root=data_root,
                                              cache_dir=str(root / "cache"), out=str(out / f"baselines-{bb}")))
    chosen = tuple(str(p.parent) for name, p in baselines.items() if name != "full")
    crossmodel_matrix(chosen, cfg, out / f"baselines-{bb}" / "eval", log=lambda m: None)
    return out


def summarize(out: Path) -> str:
    matrix = json.loads((out / "matrix" / "crossmodel.json").read_text())
    backbones = matrix["backbones"]
    sets: dict[str, dict] = defaultdict(lambda: {"seeds": [], "top1": defaultdict(list), "mean": [], "with": []})
    for row in matrix["rows"]:
        name, seed = re.fullmatch(r"(.+)_s(\d+)", Path(row["artifact"]).name).groups()
        entry = sets[name]
        entry["seeds"].append(int(seed))
        with_ = row["distilled_with"]  # a name, or a list of names for a joint set
        entry["with"] = [with_] if isinstance(with_, str) else with_
        for bb in backbones:
            entry["top1"][bb].append(row["top1"][bb])
        entry["mean"].append(statistics.fmean(row["top1"][bb] for bb in backbones))

    lines = ["| set | seeds | " + " | ".join(f"on {bb}" for bb in backbones) + " | mean |",
             "|---|---|" + "---|" * (len(backbones) + 1)]
    for name, entry in sets.items():
        cells = [cell(entry["top1"][bb], bb in entry["with"]) for bb in backbones]
        lines.append(f"| {name} | {','.join(map(str, sorted(entry['seeds'])))} | " + " | ".join(cells)
                     + f" | {cell(entry['mean'])} |")
    baseline_cells: dict[str, list[str]] = {"centroids": [], "random": []}
    for bb in backbones:
        path = out / f"baselines-{bb}" / "eval" / "crossmodel.json"
        rows = json.loads(path.read_text())["rows"] if path.is_file() else []
        for kind in baseline_cells:
            values = [r["top1"][bb] for r in rows if Path(r["artifact"]).name.startswith(kind)]
            baseline_cells[kind].append(cell(values) if values else "")
    lines.append("| centroids (chosen on the evaluating backbone) | | " + " | ".join(baseline_cells["centroids"]) + " | |")
    lines.append("| random real (5 selections, mean ± std) | | " + " | ".join(baseline_cells["random"]) + " | |")
    return "\n".join(lines)



if __name__ == "__main__":
    main()
