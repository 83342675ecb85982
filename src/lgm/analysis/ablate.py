"""Ablations as one command (the paper's Table 3): full / -decorrelate / -pyramid / -augment and A in {1, 5, 10}.

Every variant is an ordinary distillation run (``<out>/<variant>/``, resumable)
that differs from the full method in exactly one setting; all share the rest.
Each is then probed on the distilling backbone ("same eval") and, with
``--cross``, on other backbones ("avg cross": mean top-1 over them), under one
evaluation protocol.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lgm.errors import UsageError

COMPONENT_VARIANTS = (("full", "Full (Ours)", {}), ("no_decorrelate", "-Decorrelate", {"decorrelate": False}),
                      ("no_pyramid", "-Pyramid", {"param": "pixels"}), ("no_augment", "-Augment", {"aug": "none"}))


@dataclass(frozen=True)
class AblateConfig:
    """Distill the full method and its ablations with shared settings, evaluate them, write Table 3's layout."""

    dataset: str
    backbone: str
    steps: int = 1000
    """Distillation steps of every variant."""
    augs: int = 10
    """A of the full method and of the component ablations."""
    aug_values: tuple[int, ...] = (1, 5, 10)
    """A values of the views ablation (the one equal to --augs reuses the full run)."""
    ipc: int = 1
    lr: float = 2e-3
    res: int = 256
    crop: int = 224
    seed: int = 0
    real_features: Literal["live", "cached"] = "live"
    real_batch: int = 0
    """Real batch per step (0 = ipc*A*classes of each variant, the paper's; set it to hold it fixed across A)."""
    cache_per_class: int = 0
    chunk: int = 0
    cross: tuple[str, ...] = ()
    """Other backbones to evaluate on (the "avg cross" rows); none: same-model rows only."""
    repeats: int = 5
    """Probe seeds per evaluation."""
    views: int = 0
    """Probe views per image (0 = the protocol's: spec 100, authors one fresh view per epoch)."""
    epochs: int = 1000
    val_per_class: int = 100
    protocol: Literal["spec", "authors"] = "spec"
    out: str = "runs/ablate"
    """Directory: one run directory per variant, ablation.json and ablation.md."""
    device: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    random_init: bool = False
    """Randomly initialised backbones (tests)."""
    progress: bool = True


def variants(cfg: AblateConfig) -> list[tuple[str, str, dict]]:
    """(directory name, row label, config overrides) of every run, the full one first."""
    out = [(d, label, {"augs": cfg.augs} | o) for d, label, o in COMPONENT_VARIANTS]
    for a in cfg.aug_values:
        if a != cfg.augs:
            out.append((f"augs_{a}", f"A = {a}", {"augs": a}))
    return out


def run_ablation(cfg: AblateConfig, log=None) -> dict:
    from lgm.artifacts import atomic_write_json, atomic_write_text
    from lgm.config import DistillConfig
    from lgm.distillation import distill
    from lgm.evaluate import EvalConfig, evaluate_artifact
    from lgm.version import __version__

    log = log or (lambda m: print(f"lgm ablate: {m}", file=sys.stderr, flush=True))
    if any(a <= 0 for a in cfg.aug_values) or cfg.augs <= 0:
        raise UsageError(f"--augs and --aug-values must be positive, got {cfg.augs} and {cfg.aug_values}")
    if cfg.backbone in cfg.cross:
        raise UsageError(f"--cross lists the distilling backbone {cfg.backbone}; it is always evaluated (same eval)")
    base = DistillConfig(dataset=cfg.dataset, backbone=cfg.backbone, ipc=cfg.ipc, steps=cfg.steps, lr=cfg.lr,
                         res=cfg.res, crop=cfg.crop, seed=cfg.seed, real_features=cfg.real_features,
                         real_batch=cfg.real_batch, cache_per_class=cfg.cache_per_class, chunk=cfg.chunk,
                         random_init=cfg.random_init, device=cfg.device, data_root=cfg.data_root,
                         progress=cfg.progress)
    ecfg = EvalConfig(backbone=(cfg.backbone, *cfg.cross), repeats=cfg.repeats, protocol=cfg.protocol,
                      views=cfg.views, epochs=cfg.epochs, val_per_class=cfg.val_per_class, device=cfg.device,
                      data_root=cfg.data_root, cache_dir=cfg.cache_dir, random_init=cfg.random_init)
    out = Path(cfg.out)
    rows = {}
    for name, label, overrides in variants(cfg):
        run_cfg = dataclasses.replace(base, **overrides)
        log(f"{label}: distilling into {out / name}")
        art = distill(cfg.dataset, cfg.backbone, run_cfg, out=out / name)
        results = evaluate_artifact(art, ecfg, where=str(out / name), log=log)
        same = results[cfg.backbone]["top1"]
        cross = [results[b]["top1"]["mean"] for b in cfg.cross]
        rows[name] = {"label": label, "overrides": overrides, "run": str(out / name), "same": same,
                      "same_nn1": results[cfg.backbone]["nn1"],
                      "cross": {b: results[b]["top1"] for b in cfg.cross},
                      "avg_cross": statistics.fmean(cross) if cross else None,
                      "avg_cross_std": statistics.fmean(results[b]["top1"]["std"] for b in cfg.cross)
                      if cross else None}
    views = {cfg.augs: "full", **{a: f"augs_{a}" for a in cfg.aug_values if a != cfg.augs}}
    result = {"kind": "ablation", "dataset": cfg.dataset, "backbone": cfg.backbone, "cross": list(cfg.cross),
              "settings": dataclasses.asdict(cfg), "rows": rows,
              "views_rows": {str(a): views[a] for a in sorted(views) if a in cfg.aug_values or a == cfg.augs},
              "protocol": dataclasses.asdict(ecfg.probe()) | {"repeats": cfg.repeats}, "lgm_version": __version__}
    md = ablation_markdown(result)
    result["markdown"] = md
    atomic_write_json(out / "ablation.json", result)
    atomic_write_text(out / "ablation.md", md)
    return result


def _cell(mean: float | None, std: float | None) -> str:
    return "" if mean is None else f"{mean * 100:.1f} ± {(std or 0) * 100:.1f}"


def ablation_markdown(result: dict) -> str:
    """Table 3's layout: a same-eval block and an avg-cross block (rows: Full, -Decorrelate, -Pyramid, -Augment),
    then the views (A) block."""
    bb, rows = result["backbone"], result["rows"]
    cross = result["cross"]
    header = f"| Train set ({result['dataset']}) | {bb} |"
    lines = [header, "|---|---|", "| **Same eval** | |"]
    for name, _, _ in COMPONENT_VARIANTS:
        r = rows[name]
        lines.append(f"| {r['label']} | {_cell(r['same']['mean'], r['same']['std'])} |")
    if cross:
        lines.append(f"| **Avg cross** ({', '.join(cross)}) | |")
        for name, _, _ in COMPONENT_VARIANTS:
            r = rows[name]
            lines.append(f"| {r['label']} | {_cell(r['avg_cross'], r['avg_cross_std'])} |")
    lines.append("| **Views per step (A)** | |")
    for a, name in result["views_rows"].items():
        r = rows[name]
        cell = _cell(r["same"]["mean"], r["same"]["std"])
        if cross:
            cell += f" (avg cross {_cell(r['avg_cross'], r['avg_cross_std'])})"
        lines.append(f"| A = {a} | {cell} |")
    s = result["settings"]
    lines.append("")
    lines.append(f"Linear-probe top-1 (%), mean ± std over {s['repeats']} probe seeds, {s['protocol']} protocol; "
                 f"{s['steps']} steps, ipc {s['ipc']}, A = {s['augs']} unless varied, lr {s['lr']}, res {s['res']}, "
                 f"crop {s['crop']}, seed {s['seed']}.")
    return "\n".join(lines) + "\n"
