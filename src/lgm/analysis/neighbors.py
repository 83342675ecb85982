"""Each distilled image beside its nearest real training image in the backbone's space (the paper's Figure 8).

Nearest by cosine similarity of center-view embeddings (the evaluation's test
transform) over the chosen training images, of any class by default
(``--same-class`` restricts the search to the distilled image's class).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lgm.analysis.common import open_source
from lgm.command_configs import NeighborsConfig  # noqa: F401  (re-exported)


def nearest_real(query: torch.Tensor, real: torch.Tensor, query_labels: torch.Tensor | None = None,
                 real_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, cosine similarity) of each query's most similar real embedding (within its class when labels given)."""
    sim = F.normalize(query.double(), dim=1) @ F.normalize(real.double(), dim=1).t()
    if query_labels is not None and real_labels is not None:
        sim = sim.masked_fill(query_labels[:, None] != real_labels[None, :], float("-inf"))
    best = sim.max(1)
    return best.indices, best.values


def run_neighbors(run: str, cfg: NeighborsConfig, log=None) -> dict:
    from lgm.analysis.common import analysis_dir
    from lgm.artifacts import atomic_write_json

    log = log or (lambda m: print(f"lgm neighbors: {m}", file=sys.stderr, flush=True))
    ctx = open_source(run, cfg)
    index = ctx.real_index(cfg.n, cfg.seed)
    log(f"features of {len(index)} training images on {ctx.backbone.name}")
    real = ctx.real_features(index)
    labels = ctx.dataset.train.labels.cpu()[index]
    syn_labels = ctx.artifact.labels
    rows, sims = nearest_real(ctx.distilled_features(), real, syn_labels if cfg.same_class else None,
                              labels if cfg.same_class else None)
    train_rows = index[rows]
    names = ctx.artifact.class_names
    pairs = [{"index": i, "class": names[int(syn_labels[i])], "neighbor_train_index": int(train_rows[i]),
              "neighbor_class": names[int(labels[rows[i]])], "cosine": float(sims[i]),
              "same_class": bool(labels[rows[i]] == syn_labels[i])} for i in range(len(syn_labels))]
    result = {"kind": "neighbors", "run": str(run), "backbone": ctx.backbone.name, "dataset": ctx.dataset.name,
              "searched_images": int(len(index)), "same_class_only": cfg.same_class, "pairs": pairs,
              "similarity": "cosine of center-view embeddings",
              "mean_cosine": sum(p["cosine"] for p in pairs) / len(pairs)}
    out = analysis_dir(run, cfg.out)
    neighbor_images = ctx.dataset.train.load(train_rows, ctx.artifact.images.shape[-1])
    neighbor_panel(ctx.artifact.images, neighbor_images, pairs, out / "neighbors.png")
    atomic_write_json(out / "neighbors.json", result)
    log(f"mean cosine to the nearest real image {result['mean_cosine']:.3f}; {out / 'neighbors.png'}")
    return result


def neighbor_panel(distilled: torch.Tensor, neighbors: torch.Tensor, pairs: list[dict], path: Path,
                   columns: int = 10, cell: int = 128) -> None:
    """Pairs of rows: distilled images (captioned by class) over their neighbours (class and cosine)."""
    from PIL import Image, ImageDraw, ImageFont

    from lgm.grid import to_uint8_hwc

    n = distilled.shape[0]
    columns = max(1, min(columns, n))
    blocks = (n + columns - 1) // columns
    cap = 14
    block_h = 2 * (cell + cap) + 8
    canvas = Image.new("RGB", (columns * cell, blocks * block_h), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    top, bottom = to_uint8_hwc(distilled), to_uint8_hwc(neighbors)

    def fit(text: str) -> str:
        while len(text) > 3 and draw.textlength(text, font=font) > cell - 4:
            text = text[:-2] + "…"
        return text

    for i in range(n):
        b, c = divmod(i, columns)
        x, y = c * cell, b * block_h
        for k, (pix, text) in enumerate(((top[i], pairs[i]["class"]),
                                         (bottom[i], f"{pairs[i]['cosine']:.2f} {pairs[i]['neighbor_class']}"))):
            tile = Image.fromarray(pix).resize((cell, cell), Image.NEAREST if pix.shape[0] < cell else Image.BILINEAR)
            canvas.paste(tile, (x, y + k * (cell + cap)))
            draw.text((x + 2, y + k * (cell + cap) + cell + 1), fit(text), fill="black", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
