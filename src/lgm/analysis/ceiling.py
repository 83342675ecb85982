"""The feature-space ceiling of Linear Gradient Matching: what any ipc points per class can reach.

A distilled image reaches the probe only through its features, and image-space
distillation reaches features only through images (parameterization,
augmentation, how invertible the backbone is). Here the C·ipc synthetic
*features* are free vectors, optimized with the same objective as distillation
(a fresh random head every step, 1 - cosine between the head gradient of the
synthetic points and the exact full head gradient over the real features,
``lgm.matching``), then a linear probe is trained on them and scored on the
real test features. How far this ceiling sits below the full-feature probe is
what the objective itself costs; how far a distilled set sits below the ceiling
is what reaching features through images costs.

Python: :func:`feature_ceiling` on any feature tensors; the ``lgm ceiling``
command (:func:`run_ceiling`) takes the real features of a dataset and
backbone from the feature store.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from lgm.errors import LgmError
from lgm.command_configs import CeilingConfig, CeilingInit  # noqa: F401  (re-exported)
from lgm.matching import HeadInit, head_gradient, meta_loss, sample_head
from lgm.objectives import HeadSampler, MatchObjective, objective_loss, probe_trajectory



@dataclass
class CeilingResult:
    """The optimized features, their labels (class-major) and the scores (a JSON-ready dict)."""

    features: torch.Tensor  # (C * ipc) x f
    labels: torch.Tensor
    summary: dict = field(default_factory=dict)


def initial_features(real: torch.Tensor, labels: torch.Tensor, num_classes: int, ipc: int, init: CeilingInit,
                     generator: torch.Generator) -> torch.Tensor:
    """Starting points, class-major: ``real`` (ipc seeded random real rows per class, the image-space runs'
    --init real), ``means`` (the class mean, ipc times) or ``noise`` (Gaussian with the real rows' mean/std)."""
    rows = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < (ipc if init == "real" else 1):
            raise LgmError(f"class {c} has {members.numel()} real feature rows; the ceiling needs at least "
                           f"{ipc if init == 'real' else 1}")
        if init == "real":
            pick = torch.randperm(members.numel(), generator=generator, device=generator.device)[:ipc]
            rows.append(real[members[pick.to(members.device)]])
        elif init == "means":
            rows.append(real[members].mean(0, keepdim=True).expand(ipc, -1))
        elif init == "noise":
            rows.append(real.mean(0) + real.std(0) * torch.randn(ipc, real.shape[1], generator=generator,
                                                               device=generator.device, dtype=real.dtype))
        else:
            raise LgmError(f"unknown ceiling init {init!r}; choose real, means or noise")
    return torch.cat(rows).clone()


def heldout_meta_loss(features: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor,
                      num_classes: int, heads: int, head_init: HeadInit, seed: int) -> float:
    """Mean meta loss over ``heads`` fresh random heads (a generator the optimization never used): the value
    of the objective, comparable across sets of points (optimized, class means, random real rows, ...)."""
    g = torch.Generator(device=real.device).manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for _ in range(heads):
            w, b = sample_head(num_classes, real.shape[1], g, head_init)
            total += float(meta_loss(head_gradient(real, real_labels, w, b),
                                     head_gradient(features, labels, w, b)))
    return total / heads


def optimize_features(real: torch.Tensor, real_labels: torch.Tensor, num_classes: int, ipc: int = 1,
                      steps: int = 2000, lr: float = 0.01, head_init: HeadInit = "normal001",
                      init: CeilingInit = "real", seed: int = 0,
                      log_every: int = 0, log=None,
                      objective: MatchObjective | None = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """C·ipc free feature vectors minimizing the meta loss against the full real gradient.

    Every step draws a head (``head_init``, as ``lgm distill --head-init``), takes the exact head gradient over
    every row of ``real`` and the gradient of the synthetic points, and makes one Adam step on the points along
    1 - cos of the two; ``objective`` (:class:`lgm.objectives.MatchObjective`) chooses other heads (several per
    step, a real-feature probe's trajectory, unrolled points). ``lr`` is in units of the real features' overall standard deviation, so one setting
    suits backbones of any feature scale. Returns (features, labels, meta loss of every step).
    """
    if ipc <= 0 or steps < 0:
        raise LgmError(f"the ceiling needs ipc > 0 and steps >= 0, got ipc={ipc}, steps={steps}")
    if real.dim() != 2 or real_labels.shape != (real.shape[0],):
        raise LgmError(f"real features must be rows x f with one label per row, got {tuple(real.shape)} and "
                       f"{tuple(real_labels.shape)}")
    if not torch.isfinite(real).all():
        raise LgmError("the real features contain NaN or infinite values")
    real = real.float()
    device = real.device
    real_labels = real_labels.to(device)
    g_init = torch.Generator(device=device).manual_seed((seed << 8) | 1)
    g_head = torch.Generator(device=device).manual_seed((seed << 8) | 2)
    labels = torch.arange(num_classes, device=device).repeat_interleave(ipc)
    syn = torch.nn.Parameter(initial_features(real, real_labels, num_classes, ipc, init, g_init))
    opt = torch.optim.Adam([syn], lr=lr * float(real.std()))
    sampler = head_sampler(objective or MatchObjective(), real, real_labels, num_classes, head_init, seed)
    losses = []
    for step in range(steps):
        loss = objective_loss(sampler, g_head, syn, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and log_every and (step + 1) % log_every == 0:
            recent = losses[-log_every:]
            log(f"step {step + 1}/{steps}: meta loss {sum(recent) / len(recent):.4f}")
    return syn.detach(), labels, losses


def head_sampler(objective: MatchObjective, real: torch.Tensor, real_labels: torch.Tensor, num_classes: int,
                 head_init: HeadInit, seed: int) -> HeadSampler:
    """The objective's heads against the exact full gradient over ``real`` (trajectory snapshots from a probe
    trained on ``real``, batches from a generator of their own)."""
    objective.check()
    snapshots = None
    if objective.head_source == "trajectory":
        g_traj = torch.Generator(device=real.device).manual_seed((seed << 8) | 4)
        snapshots = probe_trajectory(real, real_labels, num_classes, objective.trajectory_steps, g_traj)

    def real_gradient(w, b):
        return head_gradient(real, real_labels, w, b)

    return HeadSampler(objective, num_classes, real.shape[1], head_init, real_gradient, snapshots)


def probe_scores(features: torch.Tensor, labels: torch.Tensor, num_classes: int, test: torch.Tensor,
                 test_labels: torch.Tensor, probe, seeds: list[int], val=None) -> dict:
    """Probe top-1/top-5 (over ``seeds``) and 1-NN of fixed feature rows, scored on the test features."""
    from lgm.evaluate import summary
    from lgm.probe import nearest_neighbor_top1, topk, train_probes

    res = train_probes(features.cpu(), labels.cpu(), num_classes, probe, seeds, val=val)
    return {"top1": summary(topk(res, test, test_labels, 1).tolist()),
            "top5": summary(topk(res, test, test_labels, 5).tolist()),
            "nn1": nearest_neighbor_top1(features.cpu(), labels.cpu(), test, test_labels),
            "epochs": res.epoch.tolist()}


def feature_ceiling(real: torch.Tensor, real_labels: torch.Tensor, num_classes: int, test: torch.Tensor,
                    test_labels: torch.Tensor, *, ipc: int = 1, steps: int = 2000, lr: float = 0.01,
                    head_init: HeadInit = "normal001", init: CeilingInit = "real", seed: int = 0, probe=None,
                    probe_seeds: tuple[int, ...] = (0, 1, 2, 3, 4), val: tuple[torch.Tensor, torch.Tensor] | None = None,
                    eval_heads: int = 64, full: bool = False, log=None, log_every: int = 0,
                    objective: MatchObjective | None = None) -> CeilingResult:
    """The feature-space ceiling of the meta loss for ``ipc`` points per class.

    Optimizes the points (:func:`optimize_features`), trains a probe on them (``probe``, a
    :class:`lgm.probe.ProbeConfig`; default the spec protocol on one fixed view per point, early stopping on
    ``val`` when given) for every seed of ``probe_seeds``, and scores it on ``test``. For comparison it scores,
    the same way, the class means (one point per class) and the starting points, and reports each set's
    meta loss on ``eval_heads`` held-out heads; with ``full``, also the probe on every real row
    (``lgm.evaluate.full_probe`` of the probe's protocol). The summary's ``ceiling.top1.mean`` is the ceiling.
    """
    from lgm.evaluate import full_probe
    from lgm.probe import ProbeConfig

    probe = probe or ProbeConfig(views=1)
    seeds = list(probe_seeds)
    real_f = real.float()
    objective = objective or MatchObjective()
    feats, labels, losses = optimize_features(real_f, real_labels, num_classes, ipc, steps, lr, head_init, init,
                                              seed, log_every, log, objective)
    real_labels = real_labels.to(real_f.device)
    start = initial_features(real_f, real_labels, num_classes, ipc, init,
                             torch.Generator(device=real_f.device).manual_seed((seed << 8) | 1))
    means = initial_features(real_f, real_labels, num_classes, 1, "means", torch.Generator(device=real_f.device))
    mean_labels = torch.arange(num_classes, device=real_f.device)
    test, test_labels = test.float().cpu(), test_labels.cpu()
    sets = {"ceiling": (feats, labels), "class_means": (means, mean_labels), "start": (start, labels)}
    out = {}
    for name, (x, y) in sets.items():
        out[name] = probe_scores(x, y, num_classes, test, test_labels, probe, seeds, val) | {
            "points": int(x.shape[0]),
            "heldout_meta_loss": heldout_meta_loss(x, y, real_f, real_labels, num_classes, eval_heads, head_init,
                                                   (seed << 8) | 3) if eval_heads else None}
        if log is not None:
            log(f"{name}: probe top-1 {out[name]['top1']['mean'] * 100:.1f} ± {out[name]['top1']['std'] * 100:.1f}, "
                f"held-out meta loss {out[name]['heldout_meta_loss']}")
    if full:
        res = probe_scores(real_f, real_labels, num_classes, test, test_labels, full_probe(probe.protocol),
                           seeds[:1], val)
        out["full"] = res | {"points": int(real_f.shape[0])}
        if log is not None:
            log(f"full ({real_f.shape[0]} real rows): probe top-1 {res['top1']['mean'] * 100:.1f}")
    summary = {"kind": "feature-ceiling", "ipc": ipc, "classes": num_classes, "real_rows": int(real_f.shape[0]),
               "feature_dim": int(real_f.shape[1]), "steps": steps, "lr": lr, "lr_absolute": lr * float(real_f.std()),
               "head_init": head_init, "objective": asdict(objective) | {"text": objective.describe()},
               "init": init, "seed": seed, "probe": asdict(probe) | {"seeds": seeds},
               "eval_heads": eval_heads, "sets": out, "meta_loss_curve": _curve(losses)}
    return CeilingResult(feats.cpu(), labels.cpu(), summary)


def _curve(losses: list[float], points: int = 50) -> list[list[float]]:
    """(step, mean loss over the stretch ending there) at about ``points`` places: a small, smooth curve."""
    if not losses:
        return []
    width = max(1, len(losses) // points)
    return [[i + width, sum(losses[i:i + width]) / len(losses[i:i + width])] for i in range(0, len(losses), width)]


def ceiling_markdown(summary: dict) -> str:
    sets = summary["sets"]
    full = sets.get("full")
    head = (f"Feature-space ceiling: {summary.get('dataset', '')} / {summary.get('backbone', '')}, ipc "
            f"{summary['ipc']}, {summary['steps']} steps ({summary.get('objective', {}).get('text', '1 random head per step')}) against the full gradient over {summary['real_rows']} "
            f"real rows; probe top-1 (%) on the test features, mean ± std over {len(summary['probe']['seeds'])} "
            f"seeds ({summary['probe']['protocol']} protocol, one fixed view per point).")
    lines = [head, "", "| points | top-1 (%) | of full | 1-NN (%) | held-out meta loss |", "|---|---|---|---|---|"]
    labels = {"ceiling": "optimized (the ceiling)", "class_means": "class means", "start": f"start ({summary['init']})",
              "full": "every real row (full)"}
    for name, r in sets.items():
        t1 = r["top1"]
        share = f"{t1['mean'] / full['top1']['mean'] * 100:.1f}%" if full and full["top1"]["mean"] else ""
        loss = r.get("heldout_meta_loss")
        lines.append(f"| {labels.get(name, name)} ({r['points']}) | {t1['mean'] * 100:.1f} ± {t1['std'] * 100:.1f} | "
                     f"{share} | {r['nn1'] * 100:.1f} | {'' if loss is None else f'{loss:.4f}'} |")
    return "\n".join(lines) + "\n"


def run_ceiling(cfg: CeilingConfig) -> CeilingResult:
    """``lgm ceiling``: real, validation and test features from the feature store, then :func:`feature_ceiling`."""
    from lgm.artifacts import atomic_save_tensors, atomic_write_json, atomic_write_text
    from lgm.data import load_dataset
    from lgm.devices import resolve_device
    from lgm.evaluate import EvalContext, stored_split_features
    from lgm.feature_store import FeatureStore
    from lgm.probe import ProbeConfig
    from lgm.real_cache import select_indices
    from lgm.version import __version__

    if cfg.crop > cfg.res:
        raise LgmError(f"--crop {cfg.crop} exceeds --res {cfg.res}")
    if cfg.per_class < 0 or cfg.repeats <= 0:
        raise LgmError(f"--per-class must be >= 0 and --repeats positive, got {cfg.per_class} and {cfg.repeats}")
    objective = cfg.objective()
    objective.check()

    def log(msg: str) -> None:
        print(f"lgm ceiling: {msg}", file=sys.stderr, flush=True)

    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.dataset, cfg.data_root, cfg.on_bad_image)
    bb = cfg.spec_for(cfg.backbone).load(device)
    store = FeatureStore(cfg.cache_dir, enabled=cfg.cache)
    probe = ProbeConfig.named(cfg.protocol, views=1, epochs=cfg.epochs)
    ctx = EvalContext.build(ds, bb, cfg.res, cfg.crop, device, probe, cfg.val_per_class, store=store)
    subset_seed = cfg.seed if cfg.subset_seed is None else cfg.subset_seed
    index = ctx.train_index if cfg.per_class == 0 else select_indices(ds, cfg.per_class, subset_seed)
    log(f"features of {index.numel()} training images on {cfg.backbone}")
    real = stored_split_features(ds, "train", index, bb, cfg.res, cfg.crop, device, store)
    result = feature_ceiling(real.to(device), ds.train.labels[index], ds.num_classes, ctx.test_features,
                             ctx.test_labels, ipc=cfg.ipc, steps=cfg.steps, lr=cfg.lr, head_init=cfg.head_init,
                             init=cfg.init, seed=cfg.seed, probe=probe, probe_seeds=tuple(range(cfg.repeats)),
                             val=(ctx.val_features, ctx.val_labels), eval_heads=cfg.eval_heads, full=cfg.full,
                             log=log, log_every=max(1, cfg.steps // 10), objective=objective)
    result.summary |= {"dataset": ds.name, "backbone": cfg.backbone, "random_init_backbone": bool(bb.random_init),
                       "settings": asdict(cfg), "real_rows_from": ("training split minus validation" if not cfg.per_class
                                          else f"the distillation cache's {cfg.per_class} per class (seed {subset_seed})"),
                       "real_transform": f"resize to {cfg.res}, center crop {cfg.crop}", "lgm_version": __version__}
    out = Path(cfg.out)
    atomic_save_tensors(out / "ceiling_features.safetensors", {"features": result.features, "labels": result.labels},
                        metadata={"kind": "feature-ceiling", "dataset": ds.name, "backbone": cfg.backbone})
    atomic_write_json(out / "ceiling.json", result.summary)
    md = ceiling_markdown(result.summary)
    atomic_write_text(out / "ceiling.md", md)
    print(md, end="")
    return result
