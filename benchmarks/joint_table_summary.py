"""The README's joint-vs-single table from what benchmarks/joint_table.sh wrote.

    .venv/bin/python benchmarks/joint_table_summary.py [runs/joint-table]

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
    args = ap.parse_args()
    out = Path(args.out)
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
    print("\n".join(lines))


if __name__ == "__main__":
    main()
