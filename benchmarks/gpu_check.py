"""Every GPU figure of lgm in one command: correctness on CUDA, the ImageNet-100 step, the loader, evaluation.

    PYTHONPATH=src python benchmarks/gpu_check.py --out gpu_check.json        # one H100/H200, <= 10 minutes
    PYTHONPATH=src python benchmarks/gpu_check.py --smoke --out smoke.json    # CPU, toy sizes, seconds (the tests)

Nothing is downloaded: backbones are random-init timm models (their FLOPs and
memory are those of the pretrained ones), real features are random, real
images are JPEGs written to a temporary folder. Needs torch, torchvision,
timm and safetensors, run from the source tree. Prints a markdown table and
writes the same rows as JSON (--out). Every section has a time guard (the
whole run fits --budget seconds) and records its failures row by row instead
of stopping the run; the exit status is 1 when any check failed or errored.

Sections (full mode; --smoke runs the same code on the CPU with the toy
backbone at tiny sizes, CUDA-only checks replaced by CPU equivalents):

1. correctness (dinov2_vitb14 random init, 4 classes, A 2, 256 -> 224, cached
   real side): ``portable_step`` (``distill_step`` with every random draw on
   the CPU) equals ``distill_step`` bit for bit on the CPU; the same steps in
   fp32 on CPU and CUDA give the same gradient and parameters within
   tolerance (smoke: 1 thread vs all threads); chunked = unchunked in fp32;
   the gradient of a bf16-autocast step vs fp32 has cosine >= 0.99.
2. imagenet100 (dinov2_vitb14 random init, C 100, ipc 1, A 10, 256 -> 224,
   exact real gradient over a 130,000 x 768 feature cache each step): step
   time, the floor (synthetic forward + backward to the input) and lgm/floor,
   peak memory, FLOPs per step and FLOP/s as a share of a bf16 matmul measured
   in the same run, and the largest A that fits without --chunk.
3. live: the real loader on a temporary ImageFolder of 500x375 JPEGs (100
   classes): images/s decoded, delivered by BatchLoader and by the streaming
   live real side inside a distillation step, against the step's demand.
4. evaluation: features/s of ViT-B/14 at 224 (fp32 as ``lgm eval`` computes
   them, bf16 as feature caches do) and the time of one 1,000-epoch probe on
   100 classes (100 views of 100 images, 10,000 validation rows).
5. compile: ``--compile`` (``speed_up_backbone``) on the ImageNet-100 step:
   compilation time, step time, and its gradient vs eager (cosine >= 0.99,
   both bf16).
6. projection: wall time of ImageNet-100 (5,000 steps) and ImageNet-1k on one
   GPU from the measured figures (the assumptions are printed with them).

``--perturb`` (a self-test, hidden) adds noise of half its norm to the
gradient of the side under test of every comparison, which each check must
catch.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import math
import os
import platform
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step.py's matmul and floor, also when imported


@dataclass(frozen=True)
class Settings:
    """Sizes of one gpu_check run: FULL on a GPU, SMOKE on a CPU in seconds."""

    smoke: bool
    backbone: str
    budget: float  # seconds for the whole run
    correctness: dict  # classes, augs, res, crop, cache_rows, steps
    target: dict  # the ImageNet-100 setting: classes, augs, res, crop, cache_rows, warmup, steps
    max_augs: int  # largest A tried without --chunk
    live: dict  # classes, per_class, warmup, steps
    evaluation: dict  # feature batch, batches, probe classes, views, images per class, val rows, epochs
    compile_steps: int
    matmul: int
    sections: dict = field(default_factory=dict)  # section -> time guard (s)


FULL = Settings(
    smoke=False, backbone="dinov2_vitb14", budget=570,
    correctness=dict(classes=4, augs=2, res=256, crop=224, cache_rows=2000, steps=3),
    target=dict(classes=100, augs=10, res=256, crop=224, cache_rows=130_000, warmup=2, steps=5),
    max_augs=160,
    live=dict(classes=100, per_class=12, warmup=1, steps=3),
    evaluation=dict(batch=256, batches=4, classes=100, views=100, per_class=1, val_rows=10_000, epochs=1000,
                    big_classes=1000, big_epochs=20, big_val_per_class=100),
    compile_steps=3, matmul=8192,
    sections=dict(environment=30, correctness=110, imagenet100=120, live=90, evaluation=60, compile=140,
                  projection=20),
)
SMOKE = Settings(
    smoke=True, backbone="toy_cnn", budget=240,
    correctness=dict(classes=4, augs=2, res=32, crop=28, cache_rows=500, steps=3),
    target=dict(classes=10, augs=2, res=32, crop=28, cache_rows=2000, warmup=1, steps=2),
    max_augs=8,
    live=dict(classes=4, per_class=3, warmup=1, steps=2),
    evaluation=dict(batch=16, batches=2, classes=10, views=4, per_class=1, val_rows=100, epochs=50,
                    big_classes=20, big_epochs=5, big_val_per_class=10),
    compile_steps=1, matmul=256,
    sections=dict(environment=20, correctness=60, imagenet100=60, live=40, evaluation=30, compile=60, projection=10),
)
SECTIONS = ("environment", "correctness", "imagenet100", "live", "evaluation", "compile", "projection")

# Tolerances of the correctness checks.
TOL = dict(device_grad_cos=0.9999, device_update_rel=1e-2, device_loss=1e-4, chunk_grad_rel=1e-4,
           chunk_update_rel=1e-2, bf16_grad_cos=0.99, compile_grad_cos=0.99)


# ---------------------------------------------------------------------------------------------- report


class SectionTimeout(Exception):
    """A section ran out of its time guard."""


@contextlib.contextmanager
def time_guard(seconds: float):
    """Raise SectionTimeout in the main thread after ``seconds`` (no guard outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise SectionTimeout(f"time guard of {seconds:.0f} s reached")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Report:
    """Rows of (section, check, result, status, data); status: pass, FAIL, info, skip, error."""

    deadline: float
    rows: list[dict] = field(default_factory=list)
    shared: dict = field(default_factory=dict)  # measured figures later sections build on

    def add(self, section: str, check: str, result: str, status: str = "info", **data) -> None:
        self.rows.append({"section": section, "check": check, "result": result, "status": status, "data": data})
        print(f"[{section}] {check}: {result} ({status})", file=sys.stderr, flush=True)

    def verdict(self, section: str, check: str, ok: bool, result: str, **data) -> bool:
        self.add(section, check, result, "pass" if ok else "FAIL", **data)
        return ok

    @contextlib.contextmanager
    def attempt(self, section: str, check: str):
        """One check: an exception is recorded as its row and the section goes on (a time-out ends it)."""
        try:
            yield
        except SectionTimeout:
            raise
        except torch.OutOfMemoryError as e:
            self.add(section, check, f"out of memory: {str(e).splitlines()[0][:160]}", "error")
        except Exception as e:  # noqa: BLE001 - every failure becomes a row of the report
            self.add(section, check, f"{type(e).__name__}: {str(e)[:200]}", "error",
                     traceback=traceback.format_exc(limit=6))
        finally:
            free_memory()

    def run_section(self, name: str, budget: float, later: int, fn) -> None:
        left = self.deadline - time.monotonic() - 5 * later  # a few seconds kept for every later section
        guard = min(budget, left)
        if left < 3:
            self.add(name, "section", f"skipped: {left:.0f} s left of the run's budget", "skip")
            return
        t0 = time.monotonic()
        try:
            with time_guard(guard):
                fn()
        except SectionTimeout as e:
            self.add(name, "section", f"stopped: {e}; the checks after this point did not run", "error")
        except Exception as e:  # noqa: BLE001
            self.add(name, "section", f"{type(e).__name__}: {str(e)[:200]}", "error",
                     traceback=traceback.format_exc(limit=6))
        finally:
            free_memory()
        self.shared.setdefault("section_seconds", {})[name] = round(time.monotonic() - t0, 1)

    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] in ("FAIL", "error")]

    def markdown(self) -> str:
        lines = ["| section | check | result | status |", "|---|---|---|---|"]
        for r in self.rows:
            result = r["result"].replace("|", "\\|")
            lines.append(f"| {r['section']} | {r['check']} | {result} | {r['status']} |")
        return "\n".join(lines)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fmt_rate(x: float, unit: str = "FLOP/s") -> str:
    return f"{x / 1e12:.1f} T{unit}" if x >= 1e12 else f"{x / 1e9:.2f} G{unit}"


def fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


# ---------------------------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """A distillation step's inputs, made on the CPU so that every device starts from the same numbers."""

    classes: int
    augs: int
    res: int
    crop: int
    syn0: torch.nn.Module  # fully grown pyramid, CPU
    feats: torch.Tensor  # fp16 cache rows, CPU
    feat_labels: torch.Tensor

    @classmethod
    def make(cls, classes: int, augs: int, res: int, crop: int, cache_rows: int, feature_dim: int,
             seed: int = 0) -> Workload:
        from lgm.synthetic import make_synthetic

        g = torch.Generator().manual_seed(seed)
        syn = make_synthetic("pyramid", classes, res, True, g, grow_every=1)
        syn.grow_to(10**9, g)  # every level: the most expensive render, and no growth during the check
        feats = torch.randn(cache_rows, feature_dim, generator=g).half()
        return cls(classes, augs, res, crop, syn, feats, torch.randint(0, classes, (cache_rows,), generator=g))

    def config(self, backbone: str, device: torch.device, **overrides):
        from lgm.config import DistillConfig

        fields = dict(real_features="cached", real_gradient="full") | overrides
        return DistillConfig(dataset="gpu-check", backbone=backbone, ipc=1, augs=self.augs, res=self.res,
                             crop=self.crop, random_init=True, device=str(device), progress=False,
                             **fields).resolved()


def aug_config(cfg):
    from lgm.augment import AugmentConfig

    return AugmentConfig(kind=cfg.aug, clamp_crop=cfg.clamp_crop, noise_std=cfg.noise_std, noise_mean=cfg.noise_mean)


def portable_step(syn, syn_labels, num_classes, backbone, real, optimizer, gens, cfg, views, autocast):
    """``distill_step`` with every random draw made on the CPU (``gens`` and ``views`` on the CPU).

    A device's generators draw other numbers than the CPU's, so a CPU-vs-CUDA
    comparison needs the heads, views and samples of one stream; the tensors
    live on the device of ``syn_labels``. On the CPU this is ``distill_step``
    itself (the correctness section checks that it is, bit for bit).
    """
    from lgm.real_side import real_batch_size
    from lgm.synthetic_side import synthetic_backward
    from lgm.matching import sample_head

    device = syn_labels.device
    w, b = sample_head(num_classes, backbone.feature_dim, gens.head, cfg.head_init)
    w, b = w.to(device), b.to(device)
    g_real = real.gradient(w, b, real_batch_size(cfg, num_classes), gens.real, gens.aug)
    step_seed = int(torch.randint(0, 2**62, (1,), generator=gens.views))
    optimizer.zero_grad(set_to_none=True)
    loss = synthetic_backward(syn, syn_labels.repeat(cfg.augs), backbone, g_real, w, b, views, step_seed, cfg.chunk,
                              autocast)
    optimizer.step()
    return loss


def perturbation_hook(seed: int = 1234):
    """An optimizer pre-step hook adding noise of half each gradient's norm (what --perturb injects)."""
    g = torch.Generator().manual_seed(seed)

    def hook(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    noise = torch.randn(p.grad.shape, generator=g).to(p.grad)
                    p.grad.add_(noise * (0.5 * p.grad.norm() / noise.norm().clamp_min(1e-30)))
    return hook


class StepRunner:
    """The state of a distillation on one device, stepped as a run steps it."""

    def __init__(self, w: Workload, backbone, device: torch.device, cfg, real=None, portable: bool = False,
                 perturb: bool = False, seed: int = 0) -> None:
        from lgm.augment import ViewAugmenter
        from lgm.devices import autocast_context
        from lgm.distillation import Generators, make_optimizer
        from lgm.features import CachedReal

        self.w, self.backbone, self.device, self.cfg, self.portable = w, backbone, device, cfg, portable
        self.syn = copy.deepcopy(w.syn0).to(device)
        self.labels = torch.arange(w.classes, device=device)
        self.real = real if real is not None else CachedReal(w.feats, w.feat_labels, device)
        self.optimizer = make_optimizer(list(self.syn.parameters()), cfg.lr)
        if perturb:
            self.optimizer.register_step_pre_hook(perturbation_hook())
        self.autocast = autocast_context(cfg, device)
        draw_on = torch.device("cpu") if portable else device
        self.gens = Generators.from_seed(seed, draw_on)
        self.views = ViewAugmenter(aug_config(cfg), cfg.crop, draw_on)

    def step(self) -> torch.Tensor:
        from lgm.distillation import distill_step

        fn = portable_step if self.portable else distill_step
        return fn(self.syn, self.labels, self.w.classes, self.backbone, self.real, self.optimizer, self.gens,
                  self.cfg, self.views, self.autocast)

    def params(self) -> torch.Tensor:
        return flat(self.syn.parameters())

    def grad(self) -> torch.Tensor:
        return flat(p.grad for p in self.syn.parameters())


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double().cpu() for t in tensors])


@dataclass
class Trace:
    losses: list[float]
    grad: torch.Tensor  # the first step's gradient (after any perturbation)
    start: torch.Tensor
    params: torch.Tensor  # after every step

    @classmethod
    def of(cls, runner: StepRunner, steps: int) -> Trace:
        start, losses, grad = runner.params(), [], None
        for i in range(steps):
            losses.append(float(runner.step()))
            if i == 0:
                grad = runner.grad()
        return cls(losses, grad, start, runner.params())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a, b, dim=0, eps=1e-30))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a - b| / |b|."""
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def compare(ref: Trace, test: Trace) -> dict:
    return {"grad_cos": cosine(test.grad, ref.grad), "grad_rel": rel(test.grad, ref.grad),
            "update_rel": rel(test.params - test.start, ref.params - ref.start),
            "loss_diff": max(abs(a - b) for a, b in zip(ref.losses, test.losses)),
            "exact": bool(torch.equal(ref.params, test.params) and ref.losses == test.losses)}


@contextlib.contextmanager
def strict_fp32():
    """fp32 that means fp32 on CUDA (no TF32 in matmuls or convolutions), restored afterwards."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@contextlib.contextmanager
def threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def median_time(fn, warmup: int, steps: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = fn()
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            float(out)  # a step's one host sync
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30, "GiB allocated on the GPU"
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "GiB process max RSS"


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------------------------------- the check


class GpuCheck:
    def __init__(self, settings: Settings, device: torch.device, report: Report, perturb: bool = False) -> None:
        self.s, self.device, self.report, self.perturb = settings, device, report, perturb
        self.cpu = torch.device("cpu")
        self._backbone = None

    def backbone(self):
        """The section's backbone on the device, built once (random init from a fixed seed)."""
        if self._backbone is None:
            from lgm.backbones import load_backbone

            torch.manual_seed(0)  # timm's random init draws from the global generator
            bb = load_backbone(self.s.backbone, self.cpu, random_init=True)
            woken = wake_layer_scales(bb.model)
            if woken:
                self.report.add("environment", "random init", f"{woken} LayerScale gammas set to {LAYER_SCALE} "
                                "(timm's 1e-5 leaves DINOv2's features constant to 1e-5: nothing to compare)")
            self._backbone = bb.to(self.device)
        return self._backbone

    # ------------------------------------------------------------------------------------------ 0. environment

    def environment(self) -> None:
        from step import matmul_rate

        r, d = self.report, self.device
        import timm
        import torchvision

        name = torch.cuda.get_device_name(d) if d.type == "cuda" else f"CPU {platform.machine()}"
        r.add("environment", "device", f"{name}; torch {torch.__version__}, torchvision {torchvision.__version__}, "
              f"timm {timm.__version__}; {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads",
              device=name, torch=torch.__version__, cuda=torch.version.cuda, cpu_count=os.cpu_count())
        dtype = torch.bfloat16 if d.type == "cuda" else torch.float32
        with self.report.attempt("environment", "matmul rate"):
            rate = matmul_rate(d, dtype, self.s.matmul)
            r.shared["matmul_rate"], r.shared["matmul_dtype"] = rate, str(dtype)[6:]
            r.add("environment", "matmul rate", f"{fmt_rate(rate)} ({str(dtype)[6:]}, {self.s.matmul}^2, this run)",
                  flops_per_s=rate)
        with self.report.attempt("environment", "backbone"):
            t0 = time.perf_counter()
            bb = self.backbone()
            r.add("environment", "backbone", f"{self.s.backbone} (random init, {bb.feature_dim}-d features) built "
                  f"in {time.perf_counter() - t0:.1f} s")

    # ------------------------------------------------------------------------------------------ 1. correctness

    def correctness(self) -> None:
        r, c, sec = self.report, self.s.correctness, "correctness"
        bb = self.backbone()
        bb_cpu = copy.deepcopy(bb).to(self.cpu)
        w = Workload.make(c["classes"], c["augs"], c["res"], c["crop"], c["cache_rows"], bb.feature_dim)
        cfg32 = w.config(self.s.backbone, self.device, amp="off")
        steps = c["steps"]

        with r.attempt(sec, "portable step = distill_step (CPU)"):
            cfg = w.config(self.s.backbone, self.cpu, amp="off")
            ref = Trace.of(StepRunner(w, bb_cpu, self.cpu, cfg), steps)
            test = Trace.of(StepRunner(w, bb_cpu, self.cpu, cfg, portable=True, perturb=self.perturb), steps)
            m = compare(ref, test)
            r.verdict(sec, "portable step = distill_step (CPU)", m["exact"],
                      f"{steps} steps, bit-identical: {m['exact']} (update rel. diff {m['update_rel']:.1e})", **m)

        label = "fp32 CPU vs CUDA" if self.device.type == "cuda" else "fp32 1 thread vs all threads (smoke)"
        with r.attempt(sec, label), strict_fp32():
            cfg_cpu = w.config(self.s.backbone, self.cpu, amp="off")
            if self.device.type == "cuda":
                ref = Trace.of(StepRunner(w, bb_cpu, self.cpu, cfg_cpu, portable=True), steps)
                test = Trace.of(StepRunner(w, bb, self.device, cfg32, portable=True, perturb=self.perturb), steps)
            else:  # no second device: the same steps under another thread count (other reduction orders)
                with threads(1):
                    ref = Trace.of(StepRunner(w, bb_cpu, self.cpu, cfg_cpu, portable=True), steps)
                test = Trace.of(StepRunner(w, bb_cpu, self.cpu, cfg_cpu, portable=True, perturb=self.perturb), steps)
            m = compare(ref, test)
            ok = (m["grad_cos"] >= TOL["device_grad_cos"] and m["update_rel"] <= TOL["device_update_rel"]
                  and m["loss_diff"] <= TOL["device_loss"])
            r.verdict(sec, label, ok, f"{steps} steps: gradient cosine {m['grad_cos']:.6f} (>= "
                      f"{TOL['device_grad_cos']}), update rel. diff {m['update_rel']:.1e} (<= "
                      f"{TOL['device_update_rel']}), loss diff {m['loss_diff']:.1e} (<= {TOL['device_loss']})", **m)
        del bb_cpu

        views = c["classes"] * c["augs"]
        chunk = max(1, math.ceil(views / 3))
        with r.attempt(sec, "chunked = unchunked"), strict_fp32():
            ref = Trace.of(StepRunner(w, bb, self.device, cfg32), steps)
            cfg_chunk = w.config(self.s.backbone, self.device, amp="off", chunk=chunk)
            test = Trace.of(StepRunner(w, bb, self.device, cfg_chunk, perturb=self.perturb), steps)
            m = compare(ref, test)
            ok = m["grad_rel"] <= TOL["chunk_grad_rel"] and m["update_rel"] <= TOL["chunk_update_rel"]
            r.verdict(sec, "chunked = unchunked", ok, f"fp32 on {self.device.type}, --chunk {chunk} of {views} views, "
                      f"{steps} steps: gradient rel. diff {m['grad_rel']:.1e} (<= {TOL['chunk_grad_rel']}), "
                      f"update rel. diff {m['update_rel']:.1e} (<= {TOL['chunk_update_rel']})", chunk=chunk, **m)

        with r.attempt(sec, "bf16 step gradient vs fp32"):
            with strict_fp32():
                ref = Trace.of(StepRunner(w, bb, self.device, cfg32), 1)
            cfg16 = w.config(self.s.backbone, self.device, amp="bf16")
            test = Trace.of(StepRunner(w, bb, self.device, cfg16, perturb=self.perturb), 1)
            m = compare(ref, test)
            r.shared["bf16_grad_cos"] = m["grad_cos"]
            r.verdict(sec, "bf16 step gradient vs fp32", m["grad_cos"] >= TOL["bf16_grad_cos"],
                      f"bf16 autocast on {self.device.type}: gradient cosine {m['grad_cos']:.5f} (>= "
                      f"{TOL['bf16_grad_cos']})", **m)

    # ------------------------------------------------------------------------------------------ 2. ImageNet-100

    def target_workload(self) -> Workload:
        t = self.s.target
        if "target_workload" not in self.report.shared:
            self.report.shared["target_workload"] = Workload.make(t["classes"], t["augs"], t["res"], t["crop"],
                                                                  t["cache_rows"], self.backbone().feature_dim)
        return self.report.shared["target_workload"]

    def imagenet100(self) -> None:
        from step import floor_step
        from torch.utils.flop_counter import FlopCounterMode

        r, t, sec, d = self.report, self.s.target, "imagenet100", self.device
        bb = self.backbone()
        w = self.target_workload()
        cfg = w.config(self.s.backbone, d)
        views = t["classes"] * t["augs"]
        setting = (f"{self.s.backbone} random init, C {t['classes']}, ipc 1, A {t['augs']}, {t['res']} -> {t['crop']}, "
                   f"full real gradient over {t['cache_rows']:,} x {bb.feature_dim} cached rows, amp {cfg.amp}")
        r.add(sec, "setting", setting)
        with r.attempt(sec, "step time"):
            runner, chunk = None, 0
            for chunk in (0, views // 2, views // 4, views // 8):  # --chunk only if the whole step does not fit
                try:
                    cfg = dataclasses.replace(cfg, chunk=chunk)
                    runner = StepRunner(w, bb, d, cfg)
                    float(runner.step())  # the first step allocates
                    break
                except torch.OutOfMemoryError:
                    runner = None
                    free_memory()
                    r.add(sec, "step time", f"out of memory with --chunk {chunk or 'off'} ({views} views)", "info")
            if runner is None:
                raise torch.OutOfMemoryError(f"out of memory down to --chunk {chunk}")
            r.shared["target_chunk"] = chunk
            reset_peak(d)
            times = median_time(runner.step, t["warmup"] - 1, t["steps"], d)
            step_s = statistics.median(times)
            mem, kind = peak_memory(d)
            r.shared["step_s"] = step_s
            how = f"--chunk {chunk}" if chunk else "no --chunk"
            r.add(sec, "step time", f"{step_s * 1000:.1f} ms median of {len(times)} ({views} synthetic views, {how}; "
                  f"{views / step_s:.0f} views/s)", seconds=step_s, all=times, chunk=chunk)
            r.add(sec, "peak memory", f"{mem:.2f} {kind}", gib=mem)
            with FlopCounterMode(display=False) as counter:
                runner.step()
            flops = counter.get_total_flops()
            r.shared["step_flops"] = flops
            rate = r.shared.get("matmul_rate")
            share = f" = {flops / step_s / rate:.1%} of the {r.shared['matmul_dtype']} matmul rate" if rate else ""
            r.add(sec, "FLOP/s", f"{fmt_rate(flops, 'FLOP')} per step, {fmt_rate(flops / step_s)}{share}",
                  flops=flops, share=flops / step_s / rate if rate else None)
            del runner
        with r.attempt(sec, "chunked step time"):
            # What --chunk costs (the views' features are taken twice): ImageNet-1k's 10,000 views may need it.
            half = max(1, views // 2)
            cfg_half = dataclasses.replace(cfg, chunk=half)
            runner = StepRunner(w, bb, d, cfg_half)
            chunked_s = statistics.median(median_time(runner.step, 1, 2, d))
            base = r.shared.get("step_s")
            ratio = chunked_s / base if base and not cfg.chunk else None
            r.shared["chunk_cost"] = ratio
            r.add(sec, "chunked step time", f"{chunked_s * 1000:.1f} ms with --chunk {half}"
                  + (f" ({ratio:.2f}x the unchunked step)" if ratio else ""), seconds=chunked_s, ratio=ratio)
            del runner
        with r.attempt(sec, "real gradient"):
            from lgm.features import CachedReal
            from lgm.matching import sample_head

            real = CachedReal(w.feats, w.feat_labels, d)
            g = torch.Generator(device=d).manual_seed(0)
            wh, bh = sample_head(t["classes"], bb.feature_dim, g)
            real_s = statistics.median(median_time(lambda: real.gradient(wh, bh, 2**62, None).sum(), 1, 3, d))
            r.shared["real_grad_s"] = real_s
            r.add(sec, "real gradient", f"{real_s * 1000:.2f} ms for the exact gradient over {len(real):,} rows "
                  "(part of the step time)", seconds=real_s)
        with r.attempt(sec, "lgm/floor"):
            floor = floor_step(bb, d, runner_autocast(cfg, d), views, 0, t["crop"], False,
                               torch.Generator().manual_seed(0))
            floor_s = statistics.median(median_time(floor, 1, t["steps"], d))
            step_s = r.shared.get("step_s")
            ratio = f"; lgm/floor {step_s / floor_s:.2f}x" if step_s else ""
            r.add(sec, "lgm/floor", f"floor {floor_s * 1000:.1f} ms (synthetic forward + backward to the input)"
                  + ratio, floor_s=floor_s, ratio=step_s / floor_s if step_s else None)
            del floor
        self.largest_augs(w, bb, dataclasses.replace(cfg, chunk=0))

    def largest_augs(self, w: Workload, bb, cfg) -> None:
        """The largest A whose step fits without --chunk: doubling from the target's A, then bisection."""
        r, sec, d = self.report, "imagenet100", self.device
        fits: dict[int, float] = {}
        failed: int | None = None

        def fits_with(augs: int) -> bool:
            nonlocal failed
            try:
                reset_peak(d)
                runner = StepRunner(dataclasses.replace(w, augs=augs), bb, d, dataclasses.replace(cfg, augs=augs))
                float(runner.step())
                fits[augs] = peak_memory(d)[0]
                return True
            except torch.OutOfMemoryError:
                failed = augs if failed is None else min(failed, augs)
                return False
            finally:
                runner = None
                free_memory()

        with r.attempt(sec, "largest A without --chunk"):
            augs = w.augs
            try:
                while augs <= self.s.max_augs and fits_with(augs):
                    augs *= 2
                lo = max(fits) if fits else 0
                hi = failed
                while hi is not None and hi - lo > max(1, lo // 8):
                    mid = (lo + hi) // 2
                    if fits_with(mid):
                        lo = mid
                    else:
                        hi = mid
            except SectionTimeout:
                r.add(sec, "largest A without --chunk", f"search stopped by the time guard; fits: {sorted(fits)}",
                      "info", fits=fits)
                raise
            best = max(fits) if fits else None
            if best is None:
                result = f"A {w.augs} does not fit without --chunk"
            elif failed is None:
                result = f"every A tried fits, up to {best} ({self.s.max_augs} is the most tried)"
            else:
                result = f"A {best} fits ({fits[best]:.1f} GiB peak), A {failed} does not"
            r.shared["largest_augs"] = best
            r.add(sec, "largest A without --chunk", result, largest=best, first_oom=failed,
                  peak_gib={str(k): v for k, v in fits.items()})

    # ------------------------------------------------------------------------------------------ 3. live real side

    def live(self) -> None:
        from step import floor_step

        from lgm.augment import AugmentConfig
        from lgm.data import load_dataset
        from lgm.data.loader import BatchLoader
        from lgm.devices import autocast_context
        from lgm.features import LiveReal

        r, lv, sec, d = self.report, self.s.live, "live", self.device
        t = self.s.target
        n_real = t["classes"] * t["augs"]  # ipc * A * C, the paper's real batch
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_jpeg_folder(Path(tmp), lv["classes"], lv["per_class"])
            ds = load_dataset(f"folder:{tmp}")
            train = ds.train
            n = min(n_real, len(train))
            r.add(sec, "JPEG folder", f"{len(train)} JPEGs of 500x375 in {lv['classes']} classes written in "
                  f"{time.perf_counter() - t0:.1f} s; a step's real batch: {n_real} images ({n} drawn here)",
                  images=len(train), batch=n)
            idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
            with r.attempt(sec, "decode"):
                secs = statistics.median(median_time(lambda: train.load(idx, t["res"], d), 1, 2, d))
                r.shared["decode_rate"] = n / secs
                r.add(sec, "decode", f"{n / secs:.0f} images/s (FileSplit.load, {train.workers} decoding threads, "
                      f"to {t['res']} px on {d.type})", images_per_s=n / secs)
            with r.attempt(sec, "BatchLoader"), BatchLoader(train, n, t["res"], d, sampling="balanced") as loader:
                secs = statistics.median(median_time(lambda: next(loader)[0], 1, 3, d))
                r.add(sec, "BatchLoader", f"{n / secs:.0f} images/s delivered (balanced batches, prefetch 2)",
                      images_per_s=n / secs)
            with r.attempt(sec, "live step"):
                bb = self.backbone()
                w = self.target_workload()
                cfg = w.config(self.s.backbone, d, real_features="live", real_gradient="batch", real_batch=n)
                autocast = autocast_context(cfg, d)
                old = os.environ.get("LGM_MAX_DECODED_BYTES")
                os.environ["LGM_MAX_DECODED_BYTES"] = "0"  # stream from the files, as ImageNet-size splits do
                try:
                    real = LiveReal(train, t["res"], t["crop"], AugmentConfig(), bb, d, autocast)
                finally:
                    if old is None:
                        os.environ.pop("LGM_MAX_DECODED_BYTES")
                    else:
                        os.environ["LGM_MAX_DECODED_BYTES"] = old
                runner = StepRunner(w, bb, d, cfg, real=real)
                step_s = statistics.median(median_time(runner.step, lv["warmup"], lv["steps"], d))
                floor = floor_step(bb, d, autocast, w.classes * w.augs, n, t["crop"], True,
                                   torch.Generator().manual_seed(0))
                floor_s = statistics.median(median_time(floor, 1, lv["steps"], d))
                delivered, demand = n / step_s, n / floor_s
                r.add(sec, "live step", f"{step_s * 1000:.0f} ms per step, streaming (prefetched batches used: "
                      f"{real._prefetch.hits}); floor {floor_s * 1000:.0f} ms; lgm/floor {step_s / floor_s:.2f}x",
                      step_s=step_s, floor_s=floor_s, streaming=real.streaming)
                decode = r.shared.get("decode_rate")
                keeps = f"; decoding alone gives {decode:.0f}/s: " + ("keeps up" if decode >= demand else
                                                                        "the loader limits the step") if decode else ""
                r.add(sec, "images/s vs demand", f"delivered {delivered:.0f} images/s inside the step; a step at its "
                      f"floor asks {demand:.0f}/s{keeps}", delivered=delivered, demand=demand)
                del runner, real, floor

    # ------------------------------------------------------------------------------------------ 4. evaluation

    def evaluation(self) -> None:
        from lgm.data import ImageSplit
        from lgm.probe import ProbeConfig, split_rows_features, train_probes

        r, e, sec, d = self.report, self.s.evaluation, "evaluation", self.device
        t = self.s.target
        bb = self.backbone()
        g = torch.Generator().manual_seed(0)
        n = e["batch"] * e["batches"]
        split = ImageSplit(torch.randint(0, 256, (n, 3, t["res"], t["res"]), generator=g, dtype=torch.uint8),
                           torch.zeros(n, dtype=torch.long)).to(d)
        for label, ctx in (("fp32", contextlib.nullcontext), ("bf16", lambda: torch.autocast(d.type, torch.bfloat16))):
            with r.attempt(sec, f"features/s {label}"):
                def features(ctx=ctx):
                    with ctx():
                        for s in range(0, n, e["batch"]):
                            split_rows_features(bb, split, t["res"], t["crop"], d, s, s + e["batch"])
                secs = statistics.median(median_time(features, 1, 2, d))
                r.shared[f"features_per_s_{label}"] = n / secs
                how = "as `lgm eval` computes them" if label == "fp32" else "bf16 autocast, as feature caches do"
                r.add(sec, f"features/s {label}", f"{n / secs:.0f} images/s ({self.s.backbone} at {t['crop']}, "
                      f"batches of {e['batch']}, {how})", images_per_s=n / secs)
        with r.attempt(sec, "probe"):
            c, dim = e["classes"], bb.feature_dim
            pool = torch.randn(e["views"], c * e["per_class"], dim, generator=g)
            labels = torch.arange(c).repeat_interleave(e["per_class"])
            val = (torch.randn(e["val_rows"], dim, generator=g), torch.randint(0, c, (e["val_rows"],), generator=g))
            probe = ProbeConfig(epochs=e["epochs"], patience=e["epochs"])  # validation every epoch, no early stop
            t0 = time.perf_counter()
            train_probes(pool, labels, c, probe, [0], val=val, device=d)
            probe_s = time.perf_counter() - t0
            r.shared["probe_s"] = probe_s
            r.add(sec, "probe", f"{probe_s:.1f} s for one {e['epochs']}-epoch probe on {c} classes ({e['views']} "
                  f"views of {c * e['per_class']} images, {e['val_rows']:,} validation rows; on {d.type}, as "
                  "`lgm eval` trains them)", seconds=probe_s)
        with r.attempt(sec, "probe on the device = on the CPU"):
            short = ProbeConfig(epochs=5, patience=5)
            here = train_probes(pool, labels, c, short, [0, 1], val=val, device=d)
            cpu = train_probes(pool, labels, c, short, [0, 1], val=val, device="cpu")
            w = here.weight
            if self.perturb:  # the self-test: noise of half the heads' norm must be caught
                noise = torch.randn(w.shape, generator=torch.Generator().manual_seed(1234))
                w = w + 0.5 * w.norm() * noise / noise.norm()
            rel = float((w - cpu.weight).norm() / cpu.weight.norm())
            r.verdict(sec, "probe on the device = on the CPU", rel <= 1e-4,
                    f"relative L2 of the heads after 5 epochs {rel:.1e} (same draws from CPU generators; fp32)")
        with r.attempt(sec, "probe, 1000 classes"):
            c = e["big_classes"]
            pool = torch.randn(e["views"], c, bb.feature_dim, generator=g)
            nv = c * e["big_val_per_class"]
            val = (torch.randn(nv, bb.feature_dim, generator=g), torch.randint(0, c, (nv,), generator=g))
            probe = ProbeConfig(epochs=e["big_epochs"], patience=e["big_epochs"])
            t0 = time.perf_counter()
            train_probes(pool, torch.arange(c), c, probe, [0], val=val, device=d)
            per_epoch = (time.perf_counter() - t0) / e["big_epochs"]
            r.shared["probe_1k_epoch_s"] = per_epoch
            r.add(sec, "probe, 1000 classes", f"{per_epoch * 1000:.0f} ms per epoch on {c} classes ({c} images, "
                  f"{nv:,} validation rows; {e['big_epochs']} epochs timed)", seconds_per_epoch=per_epoch)

    # ------------------------------------------------------------------------------------------ 5. compile

    def compile(self) -> None:
        from lgm.distillation import speed_up_backbone

        r, sec, d = self.report, "compile", self.device
        bb = self.backbone()
        w = self.target_workload()
        cfg = w.config(self.s.backbone, d, chunk=r.shared.get("target_chunk", 0))
        compiled = copy.deepcopy(bb)
        if self.s.smoke:  # inductor compiles C++ for minutes on a CPU; dynamo's graph capture is the same path
            compiled.model = torch.compile(compiled.model, backend="eager")
            how = "torch.compile(backend='eager') (smoke)"
        else:
            compiled = speed_up_backbone(compiled, dataclasses.replace(cfg, compile=True))
            how = "--compile (speed_up_backbone: torch.compile, inductor)"
        with r.attempt(sec, "compiled step time"):
            runner = StepRunner(w, compiled, d, cfg)
            t0 = time.perf_counter()
            float(runner.step())
            first = time.perf_counter() - t0
            reset_peak(d)
            times = median_time(runner.step, 1, self.s.compile_steps, d)
            step_s = statistics.median(times)
            mem, kind = peak_memory(d)
            r.shared["compiled_step_s"] = step_s
            eager = r.shared.get("step_s")
            vs = f"; eager {eager * 1000:.1f} ms (eager/compiled {eager / step_s:.2f}x)" if eager else ""
            flops, rate = r.shared.get("step_flops"), r.shared.get("matmul_rate")
            share = (f"; {fmt_rate(flops / step_s)} = {flops / step_s / rate:.1%} of the matmul rate (eager FLOP "
                     "count)") if flops and rate else ""
            r.add(sec, "compiled step time", f"{how}: first step (compilation) {first:.0f} s, then "
                  f"{step_s * 1000:.1f} ms median of {len(times)}{vs}; peak {mem:.2f} {kind}{share}",
                  first_s=first, seconds=step_s, all=times, peak_gib=mem)
            del runner
        with r.attempt(sec, "compile = eager"):
            ref = Trace.of(StepRunner(w, bb, d, cfg, seed=1), 1)
            test = Trace.of(StepRunner(w, compiled, d, cfg, seed=1, perturb=self.perturb), 1)
            m = compare(ref, test)
            noise = r.shared.get("bf16_grad_cos")
            ref_note = f"; bf16 vs fp32 gave {noise:.5f}" if noise is not None else ""
            r.verdict(sec, "compile = eager", m["grad_cos"] >= TOL["compile_grad_cos"],
                      f"amp {cfg.amp}: gradient cosine {m['grad_cos']:.5f} (>= {TOL['compile_grad_cos']}){ref_note}",
                      **m)

    # ------------------------------------------------------------------------------------------ 6. projection

    def projection(self) -> None:
        r, sh, sec = self.report, self.report.shared, "projection"
        steps_needed = ("step_s", "real_grad_s", "features_per_s_bf16", "features_per_s_fp32", "probe_s")
        missing = [k for k in steps_needed if k not in sh]
        if missing:
            r.add(sec, "projection", f"skipped: not measured: {', '.join(missing)}", "skip")
            return
        t, e = self.s.target, self.s.evaluation
        step = min(sh["step_s"], sh.get("compiled_step_s", math.inf))
        which = "compiled" if step == sh.get("compiled_step_s") else "eager"
        syn_part = max(step - sh["real_grad_s"], 0.0)
        # ImageNet-100: 126,689 training images -> a cache of 1 view each (the check's 130k rows), 5,000 test images,
        # 100 validation images per class, 100 probe views of the 100 distilled images, 5 probe repeats.
        in100 = {"distill": 5000 * step, "cache": 130_000 / sh["features_per_s_bf16"],
                 "eval features": (5000 + 10_000 + 100 * 100) / sh["features_per_s_fp32"], "probes": 5 * sh["probe_s"]}
        # ImageNet-1k: 10x the synthetic views per step (A 10 x 1000 classes; --chunk where it does not fit), the
        # real gradient over 1.28M rows measured here at 1,000 classes, 50,000 test images, 1000 x 100 validation.
        real_1k, real_note = None, "measured"
        with r.attempt(sec, "real gradient, ImageNet-1k"):
            real_1k, mem = self.real_gradient_1k()
            rows, classes = (12_812, 10) if self.s.smoke else (1_281_167, 1000)
            r.add(sec, "real gradient, ImageNet-1k", f"{real_1k * 1000:.1f} ms for the exact gradient over "
                  f"{rows:,} rows at {classes:,} classes (peak {mem:.1f} GiB)",
                  seconds=real_1k, peak_gib=mem)
        if real_1k is None:  # scaled from ImageNet-100's: rows x 9.9, classes x 10
            real_1k, real_note = sh["real_grad_s"] * 1_281_167 / 130_000 * 10, "scaled from ImageNet-100's"
        views_ratio = 1000 / t["classes"]
        largest = sh.get("largest_augs")
        needs_chunk = largest is not None and largest < t["augs"] * views_ratio
        chunk_cost = (sh.get("chunk_cost") or 1.5) if needs_chunk else 1.0
        step_1k = syn_part * views_ratio * chunk_cost + real_1k
        probe_1k = sh.get("probe_1k_epoch_s", math.nan) * e["epochs"] * 5
        in1k = {"distill": 5000 * step_1k, "cache": 1_281_167 / sh["features_per_s_bf16"],
                "eval features": (50_000 + 100_000 + 100 * 1000) / sh["features_per_s_fp32"], "probes": probe_1k}
        for name, parts, paper in (("ImageNet-100", in100, "about 3 h on one H200"),
                                   ("ImageNet-1k", in1k, "12 h on four GPUs")):
            total = sum(v for v in parts.values() if math.isfinite(v))
            detail = ", ".join(f"{k} {fmt_hours(v)}" for k, v in parts.items())
            note = " (smoke: toy sizes, meaningless)" if self.s.smoke else ""
            r.add(sec, name, f"{fmt_hours(total)} on one GPU{note} ({detail}); the paper: {paper}", seconds=total,
                  parts=parts)
        r.add(sec, "assumptions", f"5,000 steps at the {which} step ({step * 1000:.1f} ms at C {t['classes']}); "
              f"ImageNet-1k's step = the synthetic part x {views_ratio:.0f} (views)"
              + (f" x {chunk_cost:.2f} (--chunk: A {t['augs']} x 1000 classes exceeds the largest fitting "
                 f"{largest} x {t['classes']})" if needs_chunk else "") + f" + the {real_note} real gradient "
              f"over 1.28M rows ({real_1k * 1000:.1f} ms); caches of 1 view per image in bf16; probes 5 repeats x "
              f"{e['epochs']} epochs (1k: per-epoch time measured on {e['big_classes']} classes)")

    def real_gradient_1k(self) -> tuple[float, float]:
        """Seconds and peak GiB of the exact real gradient over ImageNet-1k's 1.28M cached rows at 1,000 classes
        (smoke: 1% of the rows, 10 classes)."""
        from lgm.features import CachedReal
        from lgm.matching import sample_head

        d, dim = self.device, self.backbone().feature_dim
        rows, classes = (12_812, 10) if self.s.smoke else (1_281_167, 1000)
        g = torch.Generator(device=d).manual_seed(0)
        feats = torch.randn(rows, dim, generator=g, device=d).half()
        real = CachedReal(feats, torch.randint(0, classes, (rows,), generator=g, device=d), d)
        w, b = sample_head(classes, dim, g)
        reset_peak(d)
        secs = statistics.median(median_time(lambda: real.gradient(w, b, 2**62, None).sum(), 1, 3, d))
        return secs, peak_memory(d)[0]


LAYER_SCALE = 0.1


def wake_layer_scales(model: torch.nn.Module, value: float = LAYER_SCALE) -> int:
    """Set every LayerScale gamma of a random-init ViT to ``value`` (a trained DINOv2's order); returns how many.

    timm initializes DINOv2's LayerScales to 1e-5, so a random-init network is
    the identity on its CLS token to 1e-5: its features hardly depend on the
    image and its input gradients are rounding noise, which would make every
    comparison of gradients meaningless. FLOPs and memory are unchanged.
    """
    scales = [m for m in model.modules() if type(m).__name__ == "LayerScale" and hasattr(m, "gamma")]
    with torch.no_grad():
        for m in scales:
            m.gamma.fill_(value)
    return len(scales)


def runner_autocast(cfg, device):
    from lgm.distillation import autocast_context

    return autocast_context(cfg, device)


def write_jpeg_folder(root: Path, classes: int, per_class: int, size=(500, 375)) -> None:
    """An ImageFolder (train: per_class, test: 1 per class) of JPEGs the size of ImageNet photos, in threads."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    def write(job):
        path, seed = job
        rng = np.random.default_rng(seed)
        coarse = rng.integers(0, 255, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
        im = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC)).astype(np.int16)
        im += rng.integers(-12, 12, im.shape, dtype=np.int16)  # photo-like: compresses as photos do
        Image.fromarray(np.clip(im, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)

    jobs = []
    for split, n in (("train", per_class), ("test", 1)):
        for c in range(classes):
            d = root / split / f"class_{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            jobs += [(d / f"{i:05d}.jpg", len(jobs) + i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        list(pool.map(write, jobs))


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="CPU, toy backbone, tiny sizes: every code path in seconds")
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma list of sections to run (default: all: {','.join(SECTIONS)})")
    ap.add_argument("--budget", type=float, default=0, help="seconds for the whole run (default 570; smoke 240)")
    ap.add_argument("--device", default="cuda", help="the device under test in full mode (default cuda)")
    ap.add_argument("--backbone", help="override the backbone (default dinov2_vitb14; smoke: toy_cnn), e.g. a small "
                    "ViT with --smoke to run the ViT path on a CPU")
    ap.add_argument("--perturb", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = SMOKE if args.smoke else FULL
    if args.backbone:
        settings = dataclasses.replace(settings, backbone=args.backbone)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        print(f"gpu_check: error: unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}",
              file=sys.stderr)
        return 2
    if args.smoke:
        device = torch.device("cpu")
    else:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            print("gpu_check: error: no CUDA device here; run it on a GPU machine, or use --smoke on a CPU",
                  file=sys.stderr)
            return 2
    started = time.time()
    report = Report(deadline=time.monotonic() + (args.budget or settings.budget))
    check = GpuCheck(settings, device, report, perturb=args.perturb)
    todo = [s for s in SECTIONS if s in wanted]
    for i, name in enumerate(todo):
        report.run_section(name, settings.sections[name], len(todo) - i - 1, getattr(check, name))
    table = report.markdown()
    print(f"## lgm gpu_check ({'smoke, ' if args.smoke else ''}{time.strftime('%Y-%m-%d', time.gmtime(started))}, "
          f"{time.time() - started:.0f} s)\n\n{table}")
    if args.out:
        shared = {k: v for k, v in report.shared.items() if isinstance(v, (int, float, str, dict, type(None)))}
        Path(args.out).write_text(json.dumps({
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "smoke": args.smoke,
            "perturb": args.perturb, "device": str(device), "seconds": round(time.time() - started, 1),
            "settings": dataclasses.asdict(settings), "tolerances": TOL, "rows": report.rows, "measured": shared,
        }, indent=1, default=str))
    return 1 if report.failed() else 0


if __name__ == "__main__":
    sys.exit(main())
