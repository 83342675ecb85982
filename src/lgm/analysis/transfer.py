"""Cross-model transfer against alignment (the paper's Table 6).

The normalised cross-model accuracy of images distilled with A and scored on
B is acc(A on B) / acc(B on B): every column of the cross-model 1-NN matrix
divided by its diagonal entry. Its correlation with the mutual k-NN alignment
of (A, B) is taken over the ordered off-diagonal pairs (A ≠ B) present in both
tables.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import tyro

from lgm.errors import LgmError, UsageError


def pearson(x: list[float], y: list[float]) -> float:
    """Pearson's r (NaN when either side is constant or there are fewer than two pairs)."""
    if len(x) != len(y):
        raise ValueError(f"{len(x)} x values vs {len(y)} y values")
    n = len(x)
    if n < 2:
        return math.nan
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def ranks(x: list[float]) -> list[float]:
    """1-based ranks, ties sharing their mean rank."""
    order = sorted(range(len(x)), key=lambda i: x[i])
    out = [0.0] * len(x)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and x[order[j + 1]] == x[order[i]]:
            j += 1
        for t in range(i, j + 1):
            out[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y))


def transfer_matrix(crossmodel: dict, metric: str = "nn1") -> tuple[list[str], list[list[float | None]]]:
    """Square (distilled-with x evaluated-on) matrix of ``metric`` from a crossmodel.json, over the backbones that
    both distilled a row and evaluate a column. Several rows distilled with one backbone are averaged."""
    cols = crossmodel.get("backbones") or []
    rows = crossmodel.get("rows") or []
    if rows and metric not in rows[0]:
        raise LgmError(f"the cross-model results lack '{metric}' (written by an older lgm); re-run lgm crossmodel")
    by_source: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("distilled_with") in cols:
            by_source.setdefault(r["distilled_with"], []).append(r[metric])
    names = [b for b in cols if b in by_source]
    matrix = [[sum(v[b] for v in by_source[a]) / len(by_source[a]) for b in names] for a in names]
    return names, matrix


def normalize_columns(matrix: list[list[float]]) -> list[list[float | None]]:
    """Each column divided by its diagonal entry (the evaluating model's own distilled accuracy); diagonal None."""
    n = len(matrix)
    out: list[list[float | None]] = [[None] * n for _ in range(n)]
    for j in range(n):
        d = matrix[j][j]
        for i in range(n):
            if i != j:
                out[i][j] = matrix[i][j] / d if d else math.nan
    return out


def off_diagonal_pairs(names_t, norm, names_a, align) -> list[tuple[str, str, float, float]]:
    """(A, B, normalised transfer A->B, alignment A~B) for every ordered pair A ≠ B in both tables."""
    ai = {n: i for i, n in enumerate(names_a)}
    pairs = []
    for i, a in enumerate(names_t):
        for j, b in enumerate(names_t):
            if i != j and a in ai and b in ai and norm[i][j] is not None:
                pairs.append((a, b, norm[i][j], align[ai[a]][ai[b]]))
    return pairs


@dataclass(frozen=True)
class AlignmentVsTransferCommand:
    """Normalised cross-model 1-NN accuracy (paper's Table 6, left) beside mutual k-NN alignment (right),
    with their Pearson and Spearman correlation over off-diagonal pairs."""

    crossmodel_json: tyro.conf.Positional[str]
    """crossmodel.json written by `lgm crossmodel` (rows distilled with the backbones of its columns)."""
    align_json: tyro.conf.Positional[str]
    """alignment.json written by `lgm align`."""
    metric: str = "nn1"
    """Cross-model metric: nn1 (1-NN accuracy, the paper's) or top1 (linear probe)."""
    out: str | None = None
    """Directory for alignment_vs_transfer.json/.md (default: beside the crossmodel JSON)."""


def alignment_vs_transfer(cross_path: str | Path, align_path: str | Path, metric: str = "nn1",
                          out: str | Path | None = None) -> dict:
    from lgm.analysis.alignment import matrix_markdown
    from lgm.artifacts import atomic_write_json, atomic_write_text, read_json

    cross, align = read_json(Path(cross_path)), read_json(Path(align_path))
    if not isinstance(cross, dict) or "rows" not in cross:
        raise LgmError(f"{cross_path} is not a crossmodel.json (no 'rows')")
    if not isinstance(align, dict) or align.get("kind") != "alignment":
        raise LgmError(f"{align_path} is not an alignment.json written by lgm align")
    if metric not in ("nn1", "top1"):
        raise UsageError(f"--metric must be nn1 or top1, got {metric}")
    names, raw = transfer_matrix(cross, metric)
    if len(names) < 2:
        raise LgmError(f"{cross_path} needs rows distilled with at least two of its evaluating backbones "
                       f"({', '.join(cross.get('backbones') or [])}) to normalise by the diagonal")
    norm = normalize_columns(raw)
    pairs = off_diagonal_pairs(names, norm, align["backbones"], align["matrix"])
    if len(pairs) < 3:
        raise LgmError(f"only {len(pairs)} off-diagonal pairs are in both tables; a correlation needs at least 3 "
                       f"(backbones in {align_path}: {', '.join(align['backbones'])})")
    xs, ys = [p[2] for p in pairs], [p[3] for p in pairs]
    ai = {n: i for i, n in enumerate(align["backbones"])}
    align_sub = [[None if a == b else align["matrix"][ai[a]][ai[b]] if a in ai and b in ai else None for b in names]
                 for a in names]
    result = {"kind": "alignment-vs-transfer", "metric": metric, "backbones": names, "raw": raw,
              "normalized": norm, "alignment": align_sub,
              "pairs": [{"distilled_with": a, "evaluated_on": b, "normalized": x, "alignment": y}
                        for a, b, x, y in pairs],
              "pearson": pearson(xs, ys), "spearman": spearman(xs, ys), "num_pairs": len(pairs),
              "sources": {"crossmodel": str(cross_path), "alignment": str(align_path)}}
    label = "1-NN" if metric == "nn1" else "top-1"
    md = (f"Normalised cross-model {label} accuracy (%, column / its diagonal; rows: distilled with, columns: "
          "evaluated on)\n\n" + matrix_markdown(names, [[None if v is None else v * 100 for v in r] for r in norm],
                                                "{:.1f}", "distilled with") +
          f"\n\nMutual {align.get('k', '')}-NN alignment\n\n" + matrix_markdown(names, align_sub, "{:.3f}") +
          f"\n\nPearson r = {result['pearson']:.3f}, Spearman rho = {result['spearman']:.3f} over {len(pairs)} "
          "ordered off-diagonal pairs.\n")
    result["markdown"] = md
    target = Path(out) if out else Path(cross_path).parent
    atomic_write_json(target / "alignment_vs_transfer.json", result)
    atomic_write_text(target / "alignment_vs_transfer.md", md)
    return result
