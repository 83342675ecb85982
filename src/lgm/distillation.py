"""The distillation loop: Linear Gradient Matching with checkpoint/resume.

One step (``distill_step``) reads like the paper's Section 3: sample a head,
take the real gradient, render and augment the synthetic set, take its
gradient, compare by cosine, step. The two sides live in ``lgm.real_side``
(which real features, and their gradient) and ``lgm.synthetic_side`` (the
synthetic views' meta loss and its backward). Everything around it (run
directories, checkpoints, signals, metrics) lives in ``lgm.rundir``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lgm import devices, joint, real_side, selection, synthetic_side
from lgm.step import GENERATOR_NAMES, Generators, distill_step, make_optimizer, matching_step, regrow_optimizer  # noqa: F401
from lgm.artifacts import DistilledSet, atomic_write_json
from lgm.augment import ViewAugmenter
from lgm.backbone_spec import weights_record
from lgm.backbones import BACKBONES, Backbone, load_backbone
from lgm.config import DistillConfig
from lgm.data import ImageDataset, check_dataset_name, load_dataset
from lgm.deprecation import moved_names
from lgm.errors import LgmError, NonFiniteLossError
from lgm.features import CachedReal, LiveReal
from lgm.grid import save_grid
from lgm.distributed import SINGLE, Shard, init_from_env
from lgm.matching import sample_head
from lgm.rundir import Checkpoint, Interrupted, RunDir, StopSignals
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

def init_from_real(syn: SyntheticImages, ds: ImageDataset, cfg: DistillConfig, device: torch.device) -> list[int]:
    """Start from ipc seeded random training images per class (class-major); returns their indices."""
    idx = selection.random_indices(ds.train.labels.cpu(), cfg.ipc, seed=(cfg.seed << 8) | 6)
    syn.init_from_images(ds.train.load(idx, cfg.res, device))
    return idx.tolist()


def joint_meta(backbones: list[Backbone], cfg: DistillConfig) -> dict:
    """Artifact fields of a joint run: every backbone (name, weights used, loss weight) and the schedule."""
    summary = joint.JointSummary.of(backbones, cfg)
    return {"backbone": summary.names, "backbones": summary.entries, "backbone_schedule": cfg.backbone_schedule,
            "random_init": any(bb.random_init for bb in backbones)}


def _log(msg: str) -> None:
    print(f"lgm: {msg}", file=sys.stderr, flush=True)


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
    ``steps=200``. Started by torchrun (WORLD_SIZE > 1), a single-backbone run
    joins the process group and does its share of every step
    (``lgm.distributed``); only rank 0 writes ``out``, and holds its lock
    (``lgm.locks``) until it returns: a second process on the same ``out``
    is refused at once.
    """
    with contextlib.ExitStack() as held:
        return _distill(dataset, backbone, config, out, held, **overrides)


def _distill(dataset, backbone, config: DistillConfig | None, out, held: contextlib.ExitStack,
             **overrides) -> DistilledSet:
    ds_name = dataset if isinstance(dataset, str) else dataset.name
    bb_name = (tuple(joint.spec_name(b) for b in backbone) if isinstance(backbone, (list, tuple))
               else backbone if isinstance(backbone, str) else backbone.name)
    if config is None:
        config = DistillConfig(dataset=ds_name, backbone=bb_name, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    cfg = config.resolved()
    cfg.validate()
    shard, device_name = init_from_env(cfg.device)
    device = devices.resolve_device(device_name)
    # Unknown names fail before a run directory is created.
    if isinstance(dataset, str):
        check_dataset_name(cfg.dataset)
    if cfg.joint:  # unknown names and missing weights of every backbone, before any work
        specs = joint.backbone_specs(backbone, cfg)
        joint.check_backbones(specs, cfg)
    elif isinstance(backbone, str):
        BACKBONES.get(cfg.backbone)

    run = RunDir(Path(out)) if out is not None else None
    writer = run if shard.is_main else None  # the only process that writes the run directory
    if run is not None:
        def check() -> bool:
            run.check(cfg)  # writes nothing: the inputs are checked before the directory is touched
            if not run.finished():
                return False
            with run.locked():  # finished: nothing to do but remove leftovers of interrupted writes
                run.remove_stale_temporaries()
            return True

        if shard.run_on_main(check):
            _log(f"{run.path} already holds a finished run ({cfg.steps} steps); nothing to do")
            return DistilledSet.load(run.path)

    ds = load_dataset(cfg.dataset, cfg.data_root, cfg.on_bad_image) if isinstance(dataset, str) else dataset
    if cfg.joint:
        bbs = joint.load_backbones(specs, cfg, device)
        bb = bbs[0]
    else:
        bb = (load_backbone(cfg.backbone, device, cfg.random_init, cfg.weights, normalization=cfg.normalization,
                            grad_checkpointing=cfg.grad_checkpointing) if isinstance(backbone, str)
              else backbone.to(device))
    # Recorded so that every later command finds (and checks) the same file.
    weights_file = weights_record(cfg.weights) if cfg.weights and not cfg.joint else None
    if run is not None:  # dataset, backbones and weights are good: now the run directory may be written
        def create() -> None:
            held.enter_context(run.locked())  # held until distill returns
            run.check(cfg)  # again, under the lock: another process may have started this run meanwhile
            run.create(cfg)

        shard.run_on_main(create)
    choice = shard.run_on_main(lambda: real_side.resolve_real_side(cfg, ds, bb, run)[0])
    n_real = real_side.real_batch_size(cfg, ds.num_classes)
    if choice.mode == "live" and n_real > len(ds.train):
        how = "--real-batch" if cfg.real_batch else f"ipc*augs*classes = {cfg.ipc}*{cfg.augs}*{ds.num_classes}"
        raise LgmError(
            f"the real batch ({how} = {n_real}) is larger than the training set of {ds.name} "
            f"({len(ds.train)} images); lower --augs, --ipc or --real-batch"
        )
    n_views = cfg.augs * ds.num_classes * cfg.ipc
    if shard.world_size > n_views:
        raise LgmError(f"{shard.world_size} processes for {n_views} synthetic views; start at most {n_views}")

    gens = Generators.from_seed(cfg.seed, device)
    if cfg.joint:
        joint.add_generators(gens, cfg, device)
    syn = make_synthetic(cfg.param, ds.num_classes * cfg.ipc, cfg.res, cfg.decorrelate, gens.init,
                         cfg.grow_every).to(device)
    syn_labels = torch.arange(ds.num_classes, device=device).repeat_interleave(cfg.ipc)
    init_indices = init_from_real(syn, ds, cfg, device) if cfg.init == "real" else None
    optimizer = make_optimizer(list(syn.parameters()), cfg.lr)
    start, elapsed = 0, 0.0
    if run is not None and run.has_checkpoint():
        ckpt = run.load_checkpoint()
        if ckpt.step > cfg.steps:
            raise LgmError(f"the checkpoint in {run.path} is at step {ckpt.step}, past this run's {cfg.steps} steps; "
                           "delete it to restart the run")
        try:
            syn.load_state_tensors(ckpt.synthetic)
            optimizer = make_optimizer(list(syn.parameters()), cfg.lr)
            ckpt.load_optimizer(optimizer)
            gens.load_state_tensors(ckpt.generators)
        except (ValueError, KeyError, IndexError, RuntimeError) as e:  # shapes or names that do not fit this run
            raise LgmError(f"the checkpoint in {run.path} does not fit this run ({type(e).__name__}: {e}); "
                           "delete checkpoint*.safetensors to restart the run") from None
        start, elapsed = ckpt.step, ckpt.seconds
        _log(f"resuming {run.path} from step {start}/{cfg.steps}")
    shard.broadcast_params_(list(syn.parameters()))
    if writer is not None:
        writer.open_metrics(keep_before=start)

    autocast = devices.autocast_context(cfg, device)
    if cfg.joint:
        bbs = [speed_up_backbone(b, cfg) for b in bbs]
        choices = shard.run_on_main(lambda: real_side.choose_real_sides(cfg, ds, bbs, None))
        real = shard.build_main_first(lambda: real_side.build_real_sides(cfg, ds, bbs, choices, device, autocast,
                                                                         run))
    else:
        bbs = [speed_up_backbone(bb, cfg)]
        real = shard.build_main_first(lambda: real_side.build_real_sides(cfg, ds, bbs, [choice], device, autocast,
                                                                         run))
        if writer is not None:
            atomic_write_json(writer.path / real_side.REAL_SIDE_FILE, choice.to_dict())
        if choice.mode == "standalone" and shard.is_main:
            _log(f"real side: features from the cache {choice.cache_path} ({len(real)} rows)")
    views = ViewAugmenter(synthetic_side.view_aug_config(cfg), cfg.crop, device)
    sync_every = 1 if device.type == "cpu" else 25
    pending: list[tuple[int, torch.Tensor, int, dict[str, torch.Tensor]]] = []
    good_step = start

    def snapshot(step: int) -> None:
        if writer is not None and cfg.snapshot_every and (step % cfg.snapshot_every == 0 or step == cfg.steps):
            with torch.no_grad():  # rendering draws no random numbers: the run is unchanged
                writer.save_snapshot(step, syn.render())

    def checkpoint(step: int) -> None:
        nonlocal good_step
        if writer is not None:
            writer.save_checkpoint(Checkpoint.capture(step, elapsed, syn, optimizer, gens, cfg))
        good_step = step

    def flush(bar) -> None:
        if not pending:
            return
        losses = torch.stack([p[1] for p in pending]).float().cpu().tolist()
        part_values = iter(torch.stack([v for p in pending for v in p[3].values()]).float().cpu().tolist()
                           if any(p[3] for p in pending) else [])
        for (step, _, levels, parts), loss in zip(pending, losses):
            row = {"step": step, "loss": loss, "levels": levels, "seconds": round(elapsed, 3)}
            row |= {joint.metric_key(name): next(part_values) for name in parts}
            if not torch.isfinite(torch.tensor(loss)):
                pending.clear()
                where = f"; the last good checkpoint (step {good_step}) is kept in {run.path}" if run else ""
                raise NonFiniteLossError(
                    f"the meta loss became {loss} at step {step}{where}. Lower --lr, or use --amp off "
                    "if mixed precision is on; re-running resumes from the checkpoint."
                )
            if writer is not None:
                writer.log_metrics(row)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", levels=pending[-1][2], refresh=False)
        pending.clear()

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.steps, initial=start, disable=not (cfg.progress and shard.is_main), desc="distill",
               unit="step", dynamic_ncols=True, file=sys.stderr)
    if start == 0:
        snapshot(0)
    with StopSignals() as stop:
        try:
            for step in range(start, cfg.steps):
                t0 = time.perf_counter()
                if syn.grow_to(step, gens.init):
                    shard.broadcast_params_(list(syn.parameters()))
                    optimizer = regrow_optimizer(optimizer, syn, cfg)
                try:
                    loss, parts = matching_step(syn, syn_labels, ds.num_classes, bbs, real, optimizer, gens, cfg,
                                                views, autocast, shard)
                except torch.OutOfMemoryError:
                    in_flight = cfg.chunk or cfg.augs * len(syn_labels)
                    raise LgmError(
                        f"out of memory with {in_flight} synthetic views in flight; re-run the same command with "
                        f"--chunk {max(1, in_flight // 2)} (the step stays exact; the run resumes from step "
                        f"{good_step})") from None
                elapsed += time.perf_counter() - t0
                pending.append((step, loss, syn.levels, parts))
                bar.update(1)
                done = step + 1
                at_sync = done % sync_every == 0 or done % cfg.checkpoint_every == 0 or done == cfg.steps
                signalled = stop.signal is not None
                # Every process must stop at the same step: with several, the flag is agreed on at sync points.
                stopping = (shard.any(signalled, device) if at_sync else False) if shard.active else signalled
                if at_sync or stopping:
                    flush(bar)
                snapshot(done)
                if done % cfg.checkpoint_every == 0 and done < cfg.steps:
                    checkpoint(done)
                if stopping and done < cfg.steps:
                    checkpoint(done)
                    if not signalled:  # another process got the signal
                        raise Interrupted(f"stopped at step {done}/{cfg.steps} with the other processes", 15)
                    raise stop.interrupted(done, cfg.steps, run.path if run else None)
        finally:
            bar.close()
            if writer is not None:
                writer.close_metrics()

    checkpoint(cfg.steps)
    with torch.no_grad():
        images = syn.render().float().cpu()
    result = DistilledSet(
        images=images,
        labels=syn_labels.cpu(),
        class_names=list(ds.class_names),
        meta={
            "kind": "distilled",
            "method": "linear-gradient-matching",
            "dataset": ds.name,
            "backbone": bb.name,
            "random_init": bool(bb.random_init),
            **({"weights_file": weights_file} if weights_file else {}),
            **(joint_meta(bbs, cfg) if cfg.joint else {}),
            "ipc": cfg.ipc,
            # A test split carved from a single class tree: every later command checks it reloads the same one.
            **({"split": ds.meta["split"]} if isinstance(ds.meta.get("split"), dict) else {}),
            "config": cfg.to_dict(),
            "config_hash": cfg.hash(),
            "lgm_version": __version__,
            "steps_done": cfg.steps,
            "init_indices": init_indices,
            "real_side": choice.to_dict(),
            "processes": shard.world_size,
            "seconds": round(elapsed, 3),
            "command_line": shlex.join(sys.argv),
        },
    )
    if writer is not None:
        save_grid(result.images, result.labels, result.class_names, writer.path / "grid.png")
        result.save(writer.path / "distilled")
        _log(f"done: {writer.path / 'distilled.safetensors'} ({elapsed:.0f} s of distillation)")
    shard.barrier()  # the others return once rank 0's artifacts are on disk
    return result


def _real_side(cfg: DistillConfig, ds: ImageDataset, bb: Backbone, device: torch.device, autocast,
               run: RunDir | None, choice: real_side.RealSideChoice) -> LiveReal | CachedReal:
    from lgm.real_cache import RealFeatureCache

    cache = RealFeatureCache.open(choice.cache_path) if choice.mode == "standalone" else None
    return real_side.build_real_side(cfg, ds, bb, device, autocast, run, choice, cache)


def speed_up_backbone(bb: Backbone, cfg: DistillConfig) -> Backbone:
    """``--compile``: torch.compile of the wrapped model (convnets are channels-last already: Backbone)."""
    if cfg.compile:
        bb.model = torch.compile(bb.model)
    return bb
