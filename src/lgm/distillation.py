"""``distill``: one Linear Gradient Matching run, from its inputs to its artifact.

``distill`` is orchestration, in the order a run takes:

1. ``make_config`` and ``check_names``: the settings, and unknown names, before anything is written;
2. ``finished_run`` / ``create_run_dir``: the run directory (``lgm.rundir``) is checked, then locked and created;
3. the real side is chosen (``lgm.real_side``), the state built or resumed (``build_state``);
4. ``run_loop``: the steps (``lgm.step.matching_step``, the same for one backbone or several, one process or
   torchrun), with metrics, snapshots, checkpoints and graceful stops (``lgm.rundir``);
5. ``write_artifact``: the distilled set, its metadata and grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lgm import devices, joint, real_side, selection, synthetic_side
from lgm.artifacts import DistilledSet
from lgm.augment import ViewAugmenter
from lgm.backbone_spec import weights_record
from lgm.backbones import BACKBONES, Backbone, load_backbone
from lgm.config import DistillConfig
from lgm.data import ImageDataset, check_dataset_name, load_dataset
from lgm.deprecation import moved_names
from lgm.distributed import Shard, init_from_env
from lgm.errors import LgmError, NonFiniteLossError
from lgm.features import CachedReal
from lgm.grid import save_grid
from lgm.objectives import TrajectoryHeads
from lgm.rundir import Checkpoint, Interrupted, RunDir, StopSignals
from lgm.step import (GENERATOR_NAMES, Generators, distill_step, make_optimizer,  # noqa: F401 (public names)
                      matching_step, regrow_optimizer)
from lgm.synthetic import SyntheticImages, make_synthetic
from lgm.version import __version__

# Helpers that moved below this module, so that the modules under it (joint, evaluation, baselines, caches)
# need not import the loop; the old names keep working with a DeprecationWarning.
__getattr__ = moved_names(__name__, {
    "resolve_device": devices, "autocast_context": devices,
    "synthetic_backward": synthetic_side, "sharded_synthetic_backward": synthetic_side,
    "real_batch_size": real_side, "RealSideChoice": real_side, "REAL_SIDE_FILE": real_side,
    "cache_request": real_side, "resolve_real_side": real_side, "build_real_side": real_side,
    "real_aug_config": real_side,
})


def distill(
    dataset: str | ImageDataset,
    backbone: str | Backbone | list[str | Backbone],
    config: DistillConfig | None = None,
    out: str | Path | None = None,
    **overrides,
) -> DistilledSet:
    """Distill ``dataset`` into ``config.ipc`` images per class for ``backbone``.

    ``dataset`` and ``backbone`` are registry names or already-built objects;
    a list of backbones distills one set for all of them jointly (see
    ``lgm.joint``). ``out`` is a run directory (created, resumed, or returned
    as is when finished). Keyword overrides replace config fields, e.g.
    ``steps=200``. Started by torchrun (WORLD_SIZE > 1), the run joins the
    process group and does its share of every step (``lgm.distributed``);
    only rank 0 writes ``out``, and holds its lock (``lgm.locks``) until it
    returns: a second process on the same ``out`` is refused at once.
    """
    cfg = make_config(dataset, backbone, config, overrides)
    shard, device_name = init_from_env(cfg.device)
    device = devices.resolve_device(device_name)
    specs = check_names(dataset, backbone, cfg)
    run = RunDir(Path(out)) if out is not None else None
    with contextlib.ExitStack() as held:
        if run is not None and finished_run(run, cfg, shard):
            _log(f"{run.path} already holds a finished run ({cfg.steps} steps); nothing to do")
            return DistilledSet.load(run.path)
        ds = load_dataset(cfg.dataset, cfg.data_root, cfg.on_bad_image) if isinstance(dataset, str) else dataset
        backbones = load_run_backbones(specs, cfg, device)
        # Recorded so that every later command finds (and checks) the same file.
        weights_file = weights_record(cfg.weights) if cfg.weights and not cfg.joint else None
        if run is not None:  # dataset, backbones and weights are good: now the run directory may be written
            shard.run_on_main(lambda: create_run_dir(run, cfg, held))
        choices = shard.run_on_main(lambda: real_side.choose_real_sides(cfg, ds, backbones, run))
        real_side.check_real_batch(cfg, ds, choices)
        n_views = cfg.augs * ds.num_classes * cfg.ipc
        if shard.world_size > n_views:
            raise LgmError(f"{shard.world_size} processes for {n_views} synthetic views; start at most {n_views}")
        state = build_state(cfg, ds, device, run, shard)
        autocast = devices.autocast_context(cfg, device)
        backbones = [speed_up_backbone(bb, cfg) for bb in backbones]
        real = real_side.open_real_side(cfg, ds, backbones, choices, device, autocast, run, shard)
        run_loop(state, cfg, ds, backbones, real, device, autocast, shard, run)
        return write_artifact(state, cfg, ds, backbones, real, weights_file, shard, run)


def make_config(dataset, backbone, config: DistillConfig | None, overrides: dict) -> DistillConfig:
    """The run's resolved, validated config: ``config`` (or one named after the inputs) with ``overrides``."""
    ds_name = dataset if isinstance(dataset, str) else dataset.name
    bb_name = (tuple(joint.spec_name(b) for b in backbone) if isinstance(backbone, (list, tuple))
               else backbone if isinstance(backbone, str) else backbone.name)
    if config is None:
        config = DistillConfig(dataset=ds_name, backbone=bb_name, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    cfg = config.resolved()
    cfg.validate()
    return cfg


def check_names(dataset, backbone, cfg: DistillConfig) -> list:
    """Unknown names (and a joint run's missing weights) fail before a run directory is created; the specs."""
    if isinstance(dataset, str):
        check_dataset_name(cfg.dataset)
    if cfg.joint:
        specs = joint.backbone_specs(backbone, cfg)
        joint.check_backbones(specs, cfg)
        return specs
    if isinstance(backbone, str):
        BACKBONES.get(cfg.backbone)
    return [backbone]


def finished_run(run: RunDir, cfg: DistillConfig, shard: Shard) -> bool:
    """Whether ``run`` already holds this finished run; refuses one holding another run (writes nothing else)."""

    def check() -> bool:
        run.check(cfg)  # writes nothing: the inputs are checked before the directory is touched
        if not run.finished():
            return False
        with run.locked():  # finished: nothing to do but remove leftovers of interrupted writes
            run.remove_stale_temporaries()
        return True

    return shard.run_on_main(check)


def create_run_dir(run: RunDir, cfg: DistillConfig, held: contextlib.ExitStack) -> None:
    """Lock the run directory (until ``held`` closes), check it again under the lock, write its config."""
    held.enter_context(run.locked())
    run.check(cfg)  # again, under the lock: another process may have started this run meanwhile
    run.create(cfg)


def load_run_backbones(specs: list, cfg: DistillConfig, device: torch.device) -> list[Backbone]:
    if cfg.joint:
        return joint.load_backbones(specs, cfg, device)
    spec = specs[0]
    return [load_backbone(cfg.backbone, device, cfg.random_init, cfg.weights, normalization=cfg.normalization,
                          grad_checkpointing=cfg.grad_checkpointing) if isinstance(spec, str) else spec.to(device)]


@dataclass
class RunState:
    """What a run carries from step to step (and its checkpoints hold)."""

    syn: SyntheticImages
    syn_labels: torch.Tensor
    optimizer: torch.optim.Optimizer
    gens: Generators
    init_indices: list[int] | None
    start: int = 0
    elapsed: float = 0.0
    good_step: int = 0
    """The step of the last checkpoint written (the one a failed run resumes from)."""


def build_state(cfg: DistillConfig, ds: ImageDataset, device: torch.device, run: RunDir | None,
                shard: Shard) -> RunState:
    """A new run's state, or the checkpoint's when ``run`` holds one; the same on every process."""
    gens = Generators.from_seed(cfg.seed, device)
    if cfg.joint:
        joint.add_generators(gens, cfg, device)
    syn = make_synthetic(cfg.param, ds.num_classes * cfg.ipc, cfg.res, cfg.decorrelate, gens.init,
                         cfg.grow_every).to(device)
    syn_labels = torch.arange(ds.num_classes, device=device).repeat_interleave(cfg.ipc)
    init_indices = init_from_real(syn, ds, cfg, device) if cfg.init == "real" else None
    state = RunState(syn, syn_labels, make_optimizer(list(syn.parameters()), cfg.lr), gens, init_indices)
    if run is not None and run.has_checkpoint():
        resume(state, run, cfg)
    shard.broadcast_params_(list(syn.parameters()))
    if run is not None and shard.is_main:
        run.open_metrics(keep_before=state.start)
    return state


def resume(state: RunState, run: RunDir, cfg: DistillConfig) -> None:
    ckpt = run.load_checkpoint()
    if ckpt.step > cfg.steps:
        raise LgmError(f"the checkpoint in {run.path} is at step {ckpt.step}, past this run's {cfg.steps} steps; "
                       "delete it to restart the run")
    try:
        state.syn.load_state_tensors(ckpt.synthetic)
        state.optimizer = make_optimizer(list(state.syn.parameters()), cfg.lr)
        ckpt.load_optimizer(state.optimizer)
        state.gens.load_state_tensors(ckpt.generators)
    except (ValueError, KeyError, IndexError, RuntimeError) as e:  # shapes or names that do not fit this run
        raise LgmError(f"the checkpoint in {run.path} does not fit this run ({type(e).__name__}: {e}); "
                       "delete checkpoint*.safetensors to restart the run") from None
    state.start = state.good_step = ckpt.step
    state.elapsed = ckpt.seconds
    _log(f"resuming {run.path} from step {state.start}/{cfg.steps}")


def init_from_real(syn: SyntheticImages, ds: ImageDataset, cfg: DistillConfig, device: torch.device) -> list[int]:
    """Start from ipc seeded random training images per class (class-major); returns their indices."""
    idx = selection.random_indices(ds.train.labels.cpu(), cfg.ipc, seed=(cfg.seed << 8) | 6)
    syn.init_from_images(ds.train.load(idx, cfg.res, device))
    return idx.tolist()


def run_loop(state: RunState, cfg: DistillConfig, ds: ImageDataset, backbones: list[Backbone],
             real: real_side.RealSide, device: torch.device, autocast, shard: Shard, run: RunDir | None) -> None:
    """Steps ``state.start`` to ``cfg.steps``; a signal (any process's) stops every process at a checkpoint."""
    from tqdm.auto import tqdm

    writer = run if shard.is_main else None  # the only process that writes the run directory
    trajectory = None if cfg.head_source == "random" else trajectory_heads(real, ds.num_classes, cfg)
    views = ViewAugmenter(synthetic_side.view_aug_config(cfg), cfg.crop, device)
    sync_every = 1 if device.type == "cpu" else 25
    metrics = PendingMetrics(state, writer)
    bar = tqdm(total=cfg.steps, initial=state.start, disable=not (cfg.progress and shard.is_main), desc="distill",
               unit="step", dynamic_ncols=True, file=sys.stderr)
    if state.start == 0:
        snapshot(state, cfg, writer, 0)
    with StopSignals() as stop:
        try:
            for step in range(state.start, cfg.steps):
                t0 = time.perf_counter()
                if state.syn.grow_to(step, state.gens.init):
                    shard.broadcast_params_(list(state.syn.parameters()))
                    state.optimizer = regrow_optimizer(state.optimizer, state.syn, cfg)
                try:
                    loss, parts = matching_step(state.syn, state.syn_labels, ds.num_classes, backbones, real,
                                                state.optimizer, state.gens, cfg, views, autocast, shard, trajectory)
                except torch.OutOfMemoryError:
                    in_flight = cfg.chunk or cfg.augs * len(state.syn_labels)
                    raise LgmError(
                        f"out of memory with {in_flight} synthetic views in flight; re-run the same command with "
                        f"--chunk {max(1, in_flight // 2)} (the step stays exact; the run resumes from step "
                        f"{state.good_step})") from None
                state.elapsed += time.perf_counter() - t0
                metrics.add(step, loss, state.syn.levels, parts)
                bar.update(1)
                done = step + 1
                at_sync = done % sync_every == 0 or done % cfg.checkpoint_every == 0 or done == cfg.steps
                signalled = stop.signal is not None
                # Every process must stop at the same step: with several, the flag is agreed on at sync points.
                stopping = (shard.any(signalled, device) if at_sync else False) if shard.active else signalled
                if at_sync or stopping:
                    metrics.flush(bar, run)
                snapshot(state, cfg, writer, done)
                if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                    checkpoint(state, cfg, writer, done)
                if stopping and done < cfg.steps:
                    checkpoint(state, cfg, writer, done)
                    if not signalled:  # another process got the signal
                        raise Interrupted(f"stopped at step {done}/{cfg.steps} with the other processes", 15)
                    raise stop.interrupted(done, cfg.steps, run.path if run else None)
        finally:
            bar.close()
            if writer is not None:
                writer.close_metrics()
    checkpoint(state, cfg, writer, cfg.steps)


def snapshot(state: RunState, cfg: DistillConfig, writer: RunDir | None, step: int) -> None:
    if writer is not None and cfg.snapshot_every and (step % cfg.snapshot_every == 0 or step == cfg.steps):
        with torch.no_grad():  # rendering draws no random numbers: the run is unchanged
            writer.save_snapshot(step, state.syn.render())


def checkpoint(state: RunState, cfg: DistillConfig, writer: RunDir | None, step: int) -> None:
    if writer is not None:
        writer.save_checkpoint(Checkpoint.capture(step, state.elapsed, state.syn, state.optimizer, state.gens, cfg))
    state.good_step = step


class PendingMetrics:
    """Step losses kept on the device until a sync point, then written as metrics.jsonl rows (one host sync)."""

    def __init__(self, state: RunState, writer: RunDir | None) -> None:
        self.state, self.writer = state, writer
        self.pending: list[tuple[int, torch.Tensor, int, dict[str, torch.Tensor]]] = []

    def add(self, step: int, loss: torch.Tensor, levels: int, parts: dict[str, torch.Tensor]) -> None:
        self.pending.append((step, loss, levels, parts))

    def flush(self, bar, run: RunDir | None) -> None:
        pending = self.pending
        if not pending:
            return
        losses = torch.stack([p[1] for p in pending]).float().cpu().tolist()
        part_values = iter(torch.stack([v for p in pending for v in p[3].values()]).float().cpu().tolist()
                           if any(p[3] for p in pending) else [])
        for (step, _, levels, parts), loss in zip(pending, losses):
            row = {"step": step, "loss": loss, "levels": levels, "seconds": round(self.state.elapsed, 3)}
            row |= {joint.metric_key(name): next(part_values) for name in parts}
            if not torch.isfinite(torch.tensor(loss)):
                pending.clear()
                where = f"; the last good checkpoint (step {self.state.good_step}) is kept in {run.path}" if run else ""
                raise NonFiniteLossError(
                    f"the meta loss became {loss} at step {step}{where}. Lower --lr, or use --amp off "
                    "if mixed precision is on; re-running resumes from the checkpoint."
                )
            if self.writer is not None:
                self.writer.log_metrics(row)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", levels=pending[-1][2], refresh=False)
        pending.clear()


def write_artifact(state: RunState, cfg: DistillConfig, ds: ImageDataset, backbones: list[Backbone],
                   real: real_side.RealSide, weights_file: dict | None, shard: Shard,
                   run: RunDir | None) -> DistilledSet:
    """The distilled set with its metadata; rank 0 writes it (and the grid) into the run directory."""
    with torch.no_grad():
        images = state.syn.render().float().cpu()
    bb = backbones[0]
    result = DistilledSet(
        images=images,
        labels=state.syn_labels.cpu(),
        class_names=list(ds.class_names),
        meta={
            "kind": "distilled",
            "method": "linear-gradient-matching",
            "dataset": ds.name,
            "backbone": bb.name,
            "random_init": bool(bb.random_init),
            **({"weights_file": weights_file} if weights_file else {}),
            **(joint_meta(backbones, cfg) if cfg.joint else {}),
            "ipc": cfg.ipc,
            # A test split carved from a single class tree: every later command checks it reloads the same one.
            **({"split": ds.meta["split"]} if isinstance(ds.meta.get("split"), dict) else {}),
            "config": cfg.to_dict(),
            "config_hash": cfg.hash(),
            "lgm_version": __version__,
            "steps_done": cfg.steps,
            "init_indices": state.init_indices,
            "real_side": real.record.to_dict(),
            # A joint run: where each backbone's real gradient came from (real_side is the first backbone's).
            **({"real_sides": real.to_dict()["backbones"]} if cfg.joint else {}),
            "processes": shard.world_size,
            "seconds": round(state.elapsed, 3),
            "command_line": shlex.join(sys.argv),
        },
    )
    if run is not None and shard.is_main:
        save_grid(result.images, result.labels, result.class_names, run.path / "grid.png")
        result.save(run.path / "distilled")
        _log(f"done: {run.path / 'distilled.safetensors'} ({state.elapsed:.0f} s of distillation)")
    shard.barrier()  # the others return once rank 0's artifacts are on disk
    return result


def joint_meta(backbones: list[Backbone], cfg: DistillConfig) -> dict:
    """Artifact fields of a joint run: every backbone (name, weights used, loss weight) and the schedule."""
    summary = joint.JointSummary.of(backbones, cfg)
    return {"backbone": summary.names, "backbones": summary.entries, "backbone_schedule": cfg.backbone_schedule,
            "random_init": any(bb.random_init for bb in backbones)}


def trajectory_heads(real, num_classes: int, cfg: DistillConfig) -> TrajectoryHeads:
    """--head-source trajectory: the snapshots of a probe trained on the real feature cache (recomputed, the same,
    on resume)."""
    cached = real.cached[0] if isinstance(real, real_side.RealSide) and real.cached else real
    if not isinstance(cached, CachedReal):
        raise LgmError("--head-source trajectory trains its probe on the real feature cache, but this run's real "
                       "side is live; add --real-features cached (with --cache-per-class N for a subset)")
    return TrajectoryHeads.train(cached.features, cached.labels, num_classes, cfg.trajectory_steps, cfg.seed)


def speed_up_backbone(bb: Backbone, cfg: DistillConfig) -> Backbone:
    """``--compile``: torch.compile of the wrapped model (convnets are channels-last already: Backbone)."""
    if cfg.compile:
        bb.model = torch.compile(bb.model)
    return bb


def _log(msg: str) -> None:
    print(f"lgm: {msg}", file=sys.stderr, flush=True)
