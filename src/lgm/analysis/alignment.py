"""Model alignment: mutual k-nearest neighbours (Huh et al. 2024, "The Platonic Representation Hypothesis").

For two backbones' embeddings of the same n images: L2-normalise every
embedding, find each image's k nearest neighbours by cosine similarity among
the other n - 1 images (itself excluded), and average over images the fraction
|knn_A(i) ∩ knn_B(i)| / k. Identical embeddings give 1; independent ones about
k / (n - 1). Features are the backbones' own (each applies its native
normalisation) on one center view per image; no outlier clipping, no
centering (the published metric's defaults).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from lgm.errors import LgmError, UsageError
from lgm.command_configs import AlignConfig  # noqa: F401  (re-exported)


def knn_indices(features: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """n x k indices of every row's k most cosine-similar other rows (self excluded; ties by lower index)."""
    n = features.shape[0]
    if not 0 < k < n:
        raise LgmError(f"k must be in 1..{n - 1} for {n} samples, got {k}")
    z = F.normalize(features.double(), dim=1)
    out = []
    for s in range(0, n, chunk):
        sim = z[s:s + chunk] @ z.t()
        rows = torch.arange(s, min(s + chunk, n))
        sim[rows - s, rows] = -math.inf
        # A stable descending sort keeps the lower index first among equal similarities.
        out.append(torch.sort(sim, dim=1, descending=True, stable=True).indices[:, :k])
    return torch.cat(out)


def mutual_knn(a: torch.Tensor, b: torch.Tensor, k: int = 10) -> float:
    """Mean over samples of |knn_a(i) ∩ knn_b(i)| / k for two embeddings (n x d_a, n x d_b) of the same samples."""
    if a.shape[0] != b.shape[0]:
        raise LgmError(f"the two embeddings cover different samples ({a.shape[0]} vs {b.shape[0]} rows)")
    return float(knn_overlap(knn_indices(a, k), knn_indices(b, k)).mean())


def knn_overlap(ia: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
    """Per-sample |ia(i) ∩ ib(i)| / k of two n x k neighbour index tables."""
    n, k = ia.shape
    mask = torch.zeros(n, n, dtype=torch.bool)
    mask.scatter_(1, ia, True)
    return mask.gather(1, ib).sum(1).double() / k


def alignment_matrix(features: dict[str, torch.Tensor], k: int = 10) -> list[list[float]]:
    """Mutual k-NN between every pair of the named embeddings (symmetric, 1 on the diagonal)."""
    names = list(features)
    knn = {name: knn_indices(features[name], k) for name in names}
    m = [[1.0] * len(names) for _ in names]
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            m[i][j] = m[j][i] = float(knn_overlap(knn[a], knn[names[j]]).mean())
    return m


def aligned_sample(labels: torch.Tensor, num_classes: int, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded stratified sample of about n images (n // classes per class)."""
    from lgm.data import stratified_indices

    per_class = max(1, n // num_classes)
    return torch.sort(stratified_indices(labels, per_class, torch.Generator().manual_seed(seed))).values


def run_align(cfg: AlignConfig, log=None) -> dict:
    """Features of the same images on every backbone (through the feature store), the matrix, and its files."""
    from lgm.artifacts import atomic_write_json, atomic_write_text
    from lgm.data import load_dataset
    from lgm.devices import resolve_device
    from lgm.evaluate import stored_split_features
    from lgm.feature_store import FeatureStore
    from lgm.version import __version__

    log = log or (lambda m: print(f"lgm align: {m}", file=sys.stderr, flush=True))
    if len(cfg.backbones) < 2:
        raise UsageError("name at least two backbones with --backbones B1 B2 ...")
    if len(set(cfg.backbones)) != len(cfg.backbones):
        raise UsageError(f"--backbones lists a backbone twice: {' '.join(cfg.backbones)}")
    if cfg.k <= 0 or cfg.n <= 1 or cfg.crop > cfg.res:
        raise UsageError(f"need --k > 0, --n > 1 and --crop <= --res (got k={cfg.k}, n={cfg.n}, crop={cfg.crop}, "
                         f"res={cfg.res})")
    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.data_root, cfg.on_bad_image)
    index = aligned_sample(ds.train.labels.cpu(), ds.num_classes, cfg.n, cfg.seed)
    if cfg.k >= len(index):
        raise LgmError(f"--k {cfg.k} needs more than {cfg.k} images; the sample holds {len(index)}")
    store = FeatureStore(cfg.cache_dir, enabled=cfg.cache)
    specs = [cfg.spec_for(name, names=cfg.backbones) for name in cfg.backbones]  # every file checked up front
    features = {}
    for spec in specs:
        name = spec.name
        log(f"features of {len(index)} {ds.name} training images on {name}")
        bb = spec.load(device)
        features[name] = stored_split_features(ds, "train", index, bb, cfg.res, cfg.crop, device, store)
        del bb
    matrix = alignment_matrix(features, cfg.k)
    result = {"kind": "alignment", "metric": "mutual-knn", "backbones": list(cfg.backbones), "matrix": matrix,
              "k": cfg.k, "n": int(len(index)), "dataset": ds.name, "seed": cfg.seed, "res": cfg.res,
              "crop": cfg.crop, "random_init": cfg.random_init, "lgm_version": __version__,
              "conventions": "L2-normalised embeddings, cosine k-NN excluding the sample itself, "
                             "mean over samples of |knn_A ∩ knn_B| / k; one center view per image, "
                             "each backbone's native input normalisation; stratified seeded sample of training "
                             "images"}
    out = Path(cfg.out)
    atomic_write_json(out / "alignment.json", result)
    atomic_write_text(out / "alignment.csv", matrix_csv(cfg.backbones, matrix))
    atomic_write_text(out / "alignment.md", matrix_markdown(cfg.backbones, matrix, "{:.3f}") +
                      f"\n\nMutual k-NN alignment, k = {cfg.k}, n = {len(index)} {ds.name} training images.\n")
    heatmap(list(cfg.backbones), matrix, out / "alignment.png",
            f"mutual {cfg.k}-NN alignment, {ds.name}, n = {len(index)}")
    return result


def matrix_csv(names, matrix, fmt: str = "{:.6f}") -> str:
    lines = [",".join(["", *names])]
    for name, row in zip(names, matrix):
        lines.append(",".join([name, *("" if v is None else fmt.format(v) for v in row)]))
    return "\n".join(lines) + "\n"


def matrix_markdown(names, matrix, fmt: str = "{:.3f}", corner: str = "") -> str:
    lines = ["| " + " | ".join([corner, *names]) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, matrix):
        lines.append("| " + " | ".join([name, *("" if v is None else fmt.format(v) for v in row)]) + " |")
    return "\n".join(lines)


def heatmap(names: list[str], matrix, path: Path, title: str, fmt: str = "{:.2f}") -> None:
    """An annotated heatmap PNG of a square matrix (None cells left blank)."""
    from lgm.analysis.plotting import pyplot, save_figure

    plt = pyplot()
    import numpy as np

    values = np.array([[math.nan if v is None else v for v in row] for row in matrix], dtype=float)
    # The colour scale spans the off-diagonal values; the diagonal (1 by definition) is drawn grey.
    shown = values.copy()
    np.fill_diagonal(shown, np.nan)
    off = values[~np.eye(len(names), dtype=bool)]
    off = off[np.isfinite(off)]
    lo, hi = (float(off.min()), float(off.max())) if off.size else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1e-6
    middle = (lo + hi) / 2
    size = 1.2 + 0.9 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    im = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, vmin=lo, vmax=hi)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is not None:
                ax.text(j, i, fmt.format(v), ha="center", va="center",
                        color="white" if v < middle and i != j else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    save_figure(fig, path)
