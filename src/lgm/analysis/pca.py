"""Where the distilled embeddings sit among the real ones (the paper's Figure 4).

A 2-D PCA fitted on real training embeddings, the distilled embeddings
projected into it, and, per distilled image, its distance from its class
centroid in units of the class's spread (the root-mean-square distance of the
class's real embeddings to their centroid), measured in the full feature
space, plus the fraction of the class's real images that lie closer to the
centroid than it does.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lgm.errors import LgmError
from lgm.analysis.common import open_source
from lgm.command_configs import PcaConfig  # noqa: F401  (re-exported)


@dataclass
class PCA:
    mean: torch.Tensor  # d
    components: torch.Tensor  # k x d, rows orthonormal, by decreasing variance
    explained_variance: torch.Tensor  # k
    explained_ratio: torch.Tensor  # k, fraction of the total variance

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x.double() - self.mean) @ self.components.t()


def fit_pca(x: torch.Tensor, k: int = 2) -> PCA:
    """Principal components of the rows of ``x`` (n x d) by SVD of the centered data (float64)."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise LgmError(f"PCA needs an n x d matrix with n >= 2, got shape {tuple(x.shape)}")
    k = min(k, x.shape[1], x.shape[0])
    x = x.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    var = s ** 2 / (x.shape[0] - 1)
    total = var.sum()
    # Sign convention: the largest-magnitude loading of each component is positive (deterministic plots).
    comps = vh[:k]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    return PCA(mean, comps, var[:k], var[:k] / total if total > 0 else torch.zeros(k, dtype=torch.float64))


def centroid_distances(real: torch.Tensor, real_labels: torch.Tensor, query: torch.Tensor,
                       query_labels: torch.Tensor) -> list[dict]:
    """Per query row: distance from its class centroid / class spread, and the fraction of its class closer in."""
    out = []
    real, query = real.double(), query.double()
    for i in range(query.shape[0]):
        c = int(query_labels[i])
        members = real[real_labels == c]
        if members.shape[0] < 2:
            raise LgmError(f"class {c} has {members.shape[0]} real embeddings; the spread needs at least 2")
        mu = members.mean(0)
        d_members = (members - mu).norm(dim=1)
        spread = float(d_members.pow(2).mean().sqrt())
        d = float((query[i] - mu).norm())
        out.append({"index": i, "label": c, "distance": d, "spread": spread,
                    "distance_in_spreads": d / spread if spread > 0 else float("inf"),
                    "fraction_of_class_closer": float((d_members < d).double().mean())})
    return out


def run_pca(run: str, cfg: PcaConfig, log=None) -> dict:
    from lgm.analysis.common import analysis_dir
    from lgm.artifacts import atomic_write_json

    log = log or (lambda m: print(f"lgm pca: {m}", file=sys.stderr, flush=True))
    ctx = open_source(run, cfg)
    index = ctx.real_index(cfg.n, cfg.seed)
    log(f"features of {len(index)} training images and {len(ctx.artifact.labels)} distilled images on "
        f"{ctx.backbone.name}")
    real = ctx.real_features(index)
    real_labels = ctx.dataset.train.labels.cpu()[index]
    syn = ctx.distilled_features()
    pca = fit_pca(real, 2)
    real_2d, syn_2d = pca.transform(real), pca.transform(syn)
    dists = centroid_distances(real, real_labels, syn, ctx.artifact.labels)
    names = ctx.artifact.class_names
    for d in dists:
        d["class"] = names[d["label"]]
    per = [d["distance_in_spreads"] for d in dists]
    result = {"kind": "pca", "run": str(run), "backbone": ctx.backbone.name, "dataset": ctx.dataset.name,
              "real_images": int(len(index)), "seed": cfg.seed, "explained_variance_ratio": pca.explained_ratio.tolist(),
              "distilled_2d": syn_2d.tolist(), "distilled": dists,
              "mean_distance_in_spreads": sum(per) / len(per),
              "mean_fraction_of_class_closer": sum(d["fraction_of_class_closer"] for d in dists) / len(dists),
              "spread": "root-mean-square distance of a class's real embeddings to their centroid (full feature "
                        "space)"}
    out = analysis_dir(run, cfg.out)
    plot_pca(real_2d, real_labels, syn_2d, ctx.artifact.labels, names, pca.explained_ratio.tolist(),
             out / "pca.png", f"{ctx.dataset.name} on {ctx.backbone.name}")
    atomic_write_json(out / "pca.json", result)
    log(f"distilled embeddings lie {result['mean_distance_in_spreads']:.2f} class spreads from their centroids "
        f"on average; {out / 'pca.png'}")
    return result


def plot_pca(real_2d, real_labels, syn_2d, syn_labels, names, ratio, path: Path, title: str) -> None:
    from lgm.analysis.plotting import pyplot, save_figure

    plt = pyplot()
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(7.5, 6))
    for c in range(len(names)):
        pts = real_2d[real_labels == c].numpy()
        if len(pts):
            ax.scatter(pts[:, 0], pts[:, 1], s=4, alpha=0.25, color=cmap(c % cmap.N), label=names[c], linewidths=0)
    for i in range(syn_2d.shape[0]):
        c = int(syn_labels[i])
        ax.scatter(syn_2d[i, 0], syn_2d[i, 1], s=220, marker="*", color=cmap(c % cmap.N), edgecolors="black",
                   linewidths=1.2, zorder=3)
    ax.set_xlabel(f"PC 1 ({ratio[0] * 100:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({ratio[1] * 100:.1f}% of variance)" if len(ratio) > 1 else "PC 2")
    ax.set_title(f"{title}: real embeddings (dots), distilled (stars)")
    if len(names) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best", framealpha=0.8)
    save_figure(fig, path)
