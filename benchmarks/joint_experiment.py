"""Joint vs single-backbone distillation against a dissimilar backbone (issue 22), resumable across sessions.

    OMP_NUM_THREADS=1 python benchmarks/joint_experiment.py --work /scratch/joint-work \\
        --results docs/results/joint --doc docs/joint.md --doc README.md \\
        [--seeds 0,1,2] [--sets ...] [--max-sets N] [--budget-hours H]
    python benchmarks/joint_experiment.py --table [--results docs/results/joint]    # print the table (reads JSON only)
    python benchmarks/joint_experiment.py --smoke [--work W --results R]           # seconds: toy backbones, tiny data
    python benchmarks/joint_experiment.py --recheck joint-all_s1 [--on effnet_lite0]  # probe a committed set again, compare

Sets (each with distillation seeds 0, 1, 2, ...): ``lite0`` (distilled on
effnet_lite0), ``opennsfw`` (on opennsfw_resnet50), ``joint-all`` and
``joint-sample`` (one set for both, ``--backbone-schedule all`` / ``sample``),
at the demo's settings (``SETTINGS``). Every set is probed (SPEC §6, 5 probe
seeds) on effnet_lite0, opennsfw_resnet50 and effnet_lite2 (never distilled
on). ``baselines`` (once per evaluating backbone, chosen in its own space):
centroids (5 probe seeds), 5 random selections (1 probe seed each) and the
full training set.

What survives a session is the results area (committed, small): per set
``<set>_s<seed>/`` with ``images.png`` (the 10 images, 8-bit, class-major in
one row), ``set.json`` (how it was made) and ``eval.json`` (its probes; the
probes score exactly the 8-bit images committed), per evaluating backbone
``baselines_<backbone>/baselines.json``. A task whose result is there is
skipped; anything else is (re)done in the work directory, which resumes:
``lgm distill`` run directories continue from their checkpoint, the real
feature caches (``lgm cache-features``, one per backbone and seed, shared by
the single and joint sets of that seed) and every evaluation feature live in
the feature store ($LGM_CACHE_DIR, else ~/.cache/lgm) and resume by chunk,
each evaluating backbone's probes of a set are kept in the work directory as
they finish. A result directory is written whole (renamed into place) or
not at all. ``--doc`` (repeatable: docs/joint.md and the README) rewrites the
table between the markers of each file after every finished task (the test regenerates it from the results and
compares). ``--budget-hours``: no task starts after the deadline and a
distillation running at it checkpoints and stops (SIGTERM to itself), the
script exiting 0; ``--max-sets``: stop after finishing that many tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

DOC_BEGIN = "<!-- joint-table:begin (benchmarks/joint_experiment.py --table; do not edit by hand) -->"
DOC_END = "<!-- joint-table:end -->"

# The evaluating backbones by role: the two distilling ones and one never distilled on.
ROLES = ("a", "b", "held_out")
# Each set: the roles it distils on and the joint schedule (None: a single-backbone run).
SETS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "lite0": (("a",), None),
    "opennsfw": (("b",), None),
    "joint-all": (("a", "b"), "all"),
    "joint-sample": (("a", "b"), "sample"),
}
BASELINES = "baselines"


@dataclass(frozen=True)
class Settings:
    """Everything that determines a result; its hash is recorded in every result and checked before a skip
    (a new field changes the hash of every committed result: leave it out of ``digest`` at its default)."""

    backbones: dict[str, str]
    """Role -> backbone name."""
    distill: dict
    """DistillConfig fields shared by every set (dataset and backbone aside)."""
    dataset: str = "fashion-mnist"
    repeats: int = 5
    """Probe seeds of a distilled set and of the centroids."""
    probe_views: int = 0
    """0: the protocol's (spec: 100 views per image)."""
    probe_epochs: int = 1000
    val_per_class: int = 100
    random_selections: int = 5
    """Random real selections per evaluating backbone, one probe seed each."""

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


# The demo's settings when this table was started (lgm.command_configs.DEMO_DISTILL then: 750 steps, A = 4,
# 128 px, real side exact over a cache of 1,000 whole images per class; the demo has since gone to 500
# steps, which score the same): they fit a CPU session (docs/joint.md, "Sizing"). Kept, so that every
# session's sets belong to one table.
SETTINGS = Settings(
    backbones={"a": "effnet_lite0", "b": "opennsfw_resnet50", "held_out": "effnet_lite2"},
    distill={"ipc": 1, "steps": 750, "augs": 4, "lr": 1e-2, "init": "real", "res": 128, "crop": 128,
             "real_aug": "none", "real_features": "cached", "real_gradient": "full", "cache_per_class": 1000,
             "cache_views": 1},
)
SMOKE_SETTINGS = Settings(
    backbones={"a": "toy_smoke_a", "b": "toy_smoke_b", "held_out": "toy_smoke_c"},
    distill={"ipc": 1, "steps": 12, "augs": 2, "lr": 1e-2, "init": "real", "res": 16, "crop": 16, "real_aug": "none",
             "real_features": "cached", "real_gradient": "full", "cache_per_class": 10, "cache_views": 1},
    repeats=2, probe_views=2, probe_epochs=5, val_per_class=2, random_selections=2,
)
# Steps between checkpoints: an opennsfw_resnet50 step is ~5 s on one CPU thread (run control, not in the hash).
CHECKPOINT_EVERY = 25


def register_smoke_backbones() -> None:
    """Three toy backbones with their own weights; ``toy_smoke_b`` has a fixed input size, like opennsfw_resnet50."""
    import torch

    from lgm.backbones import BACKBONES, BackboneEntry, register_backbone
    from lgm.backbones.toy import TOY_INFO, build_toy

    for k, (name, size) in enumerate((("toy_smoke_a", None), ("toy_smoke_b", 24), ("toy_smoke_c", None))):
        if name in BACKBONES:
            continue

        def build(random_init, weights, input_size, seed=k):
            net = build_toy(True, None)
            g = torch.Generator().manual_seed(100 + seed)
            with torch.no_grad():
                for p in net.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() > 1 else 0.1))
            return net

        info = dataclasses.replace(TOY_INFO, name=name, input_size=size, fixed_input_size=size is not None)
        register_backbone(BackboneEntry(info, build, always_random=True))


# ----------------------------------------------------------------------------------------------- the plan


def result_name(set_name: str, seed: int) -> str:
    return f"{set_name}_s{seed}"


def plan(sets: list[str], seeds: list[int]) -> list[tuple[str, int | None]]:
    """Tasks, cheapest useful slice first: the baselines, every seed of the Lite0 single set, then seed by seed
    the sets with opennsfw_resnet50 (single, joint all, joint sample), so each seed's rows complete together."""
    tasks: list[tuple[str, int | None]] = []
    if BASELINES in sets:
        tasks += [(BASELINES, None)]
    if "lite0" in sets:
        tasks += [("lite0", s) for s in seeds]
    for s in seeds:
        tasks += [(name, s) for name in SETS if name != "lite0" and name in sets]
    return tasks


class BudgetReached(Exception):
    pass


class Experiment:
    def __init__(self, settings: Settings, work: str | Path, results: str | Path, data_root: str | None = None,
                 cache_dir: str | None = None, device: str = "cpu", docs: list[str | Path] | None = None,
                 deadline: float | None = None, log=None) -> None:
        self.settings, self.work, self.results = settings, Path(work), Path(results)
        self.data_root, self.cache_dir, self.device = data_root, cache_dir, device
        self.docs, self.deadline = [Path(d) for d in docs or ()], deadline
        self.checkpoint_every = CHECKPOINT_EVERY
        self.log = log or (lambda m: print(f"joint_experiment: {m}", file=sys.stderr, flush=True))

    # -- running

    def run(self, tasks: list[tuple[str, int | None]], max_sets: int = 0) -> list[str]:
        """Do every task of ``tasks`` not in the results yet; returns the names of the results made now."""
        made, finished = [], 0
        for name, seed in tasks:
            if self.done(name, seed):
                self.log(f"{name if seed is None else result_name(name, seed)}: in {self.results}, skipped")
                continue
            if max_sets and finished >= max_sets:
                self.log(f"--max-sets {max_sets} reached")
                break
            try:
                self.check_budget()
                if seed is None:
                    self.baselines(made)
                else:
                    made.append(self.distilled_set(name, seed))
            except BudgetReached as e:
                self.log(f"{e}; re-run the same command to go on")
                break
            finished += 1
        return made

    def result_written(self) -> None:
        """After every result (each baseline backbone's too): the docs' tables, so that they match the results."""
        for doc in self.docs:
            write_doc_table(doc, self.results, self.settings)

    def check_budget(self) -> None:
        if self.deadline is not None and time.time() >= self.deadline:
            raise BudgetReached("the time budget is spent")

    def done(self, name: str, seed: int | None) -> bool:
        if seed is None:
            return all(self._checked(self.results / f"{BASELINES}_{bb}", "baselines.json")
                       for bb in self.settings.backbones.values())
        return self._checked(self.results / result_name(name, seed), "set.json")

    def _checked(self, directory: Path, record: str) -> bool:
        path = directory / record
        if not path.is_file():
            return False
        made_with = json.loads(path.read_text()).get("settings")
        if made_with != self.settings.digest():
            from lgm.errors import LgmError

            raise LgmError(f"{path} was made with other settings ({made_with}, these are {self.settings.digest()}); "
                           "move it away or give another --results")
        return True

    # -- a distilled set

    def config(self, set_name: str, seed: int):
        from lgm.config import DistillConfig

        roles, schedule = SETS[set_name]
        names = [self.settings.backbones[r] for r in roles]
        joint = {"backbone_schedule": schedule} if schedule else {}
        return DistillConfig(dataset=self.settings.dataset, backbone=names if schedule else names[0], seed=seed,
                             device=self.device, data_root=self.data_root, cache_dir=str(self.real_cache_root(seed)),
                             checkpoint_every=self.checkpoint_every, progress=False, **self.settings.distill, **joint)

    def real_cache_root(self, seed: int) -> Path:
        """Where this seed's real-feature caches live, and nothing else: a distillation takes any standalone cache
        of its backbone it finds (whatever its images), so each seed searches a root of its own."""
        return self.work / "real-caches" / f"s{seed}"

    def real_caches(self, cfg) -> None:
        """One standalone real-feature cache per backbone and seed (found by every set of that seed)."""
        import contextlib

        from lgm.command_configs import CacheFeaturesConfig
        from lgm.real_cache import run_cache_features

        for bb in cfg.backbones:
            self.check_budget()
            with contextlib.redirect_stdout(sys.stderr):  # it prints the cache's directory, as its command does
                run_cache_features(CacheFeaturesConfig(
                    dataset=cfg.dataset, backbone=bb, views=cfg.cache_views, res=cfg.res, crop=cfg.crop,
                    per_class=cfg.cache_per_class, seed=cfg.seed, aug="none" if cfg.real_aug == "none" else cfg.aug,
                    clamp_crop=cfg.clamp_crop, noise_std=cfg.noise_std, noise_mean=cfg.noise_mean,
                    cache_dir=cfg.cache_dir, device=self.device, data_root=self.data_root, progress=False))

    def distilled_set(self, set_name: str, seed: int) -> str:
        import lgm
        from lgm.artifacts import DistilledSet
        from lgm.config import RUN_CONTROL_KEYS

        name = result_name(set_name, seed)
        cfg = self.config(set_name, seed)
        run_dir = self.work / name
        self.log(f"{name}: distilling in {run_dir}")
        self.real_caches(cfg)
        self.check_budget()
        with self.stop_at_deadline():
            lgm.distill(cfg.dataset, list(cfg.backbones) if cfg.joint else cfg.backbone, cfg, out=run_dir)
        made = DistilledSet.load(run_dir)
        png = png_bytes(made.images)
        compact = DistilledSet(png_images(png, made.images.shape), made.labels, made.class_names, made.meta)
        evals = {}
        for role in ROLES:
            bb = self.settings.backbones[role]
            evals[bb] = self.cached_eval(self.work / f"{name}.eval" / f"{bb}.json",
                                         lambda bb=bb: self.evaluate(compact, bb, self.settings.repeats))
        record = {"set": set_name, "seed": seed, "settings": self.settings.digest(),
                  "backbones": list(cfg.backbones), "schedule": SETS[set_name][1],
                  # Where this machine keeps things is left out (run control: not in the config hash either).
                  "config": {k: v for k, v in made.meta["config"].items() if k not in RUN_CONTROL_KEYS},
                  "config_hash": made.meta["config_hash"],
                  "lgm_version": made.meta["lgm_version"], "seconds": made.meta["seconds"],
                  "real_side": {k: v for k, v in made.meta["real_side"].items() if k != "cache_path"},
                  **({"real_sides": [{k: v for k, v in side.items() if k != "cache_path"}
                                     for side in made.meta["real_sides"]]} if "real_sides" in made.meta else {}),
                  "init_indices": made.meta.get("init_indices"),
                  "labels": made.labels.tolist(), "class_names": made.class_names,
                  "images_png_sha256": hashlib.sha256(png).hexdigest(),
                  "images_png_layout": "one row, class-major, each image res x res, 8-bit RGB"}
        write_result_dir(self.results / name, {"images.png": png, "eval.json": dumps(evals), "set.json": dumps(record)})
        self.result_written()
        self.log(f"{name}: done -> {self.results / name}")
        return name

    def stop_at_deadline(self):
        """A distillation running at the deadline gets SIGTERM: it checkpoints and raises lgm's Interrupted."""
        import contextlib

        from lgm.rundir import Interrupted

        @contextlib.contextmanager
        def guard():
            if self.deadline is None:
                yield
                return

            def outside_the_loop(signum, frame):  # lgm's loop has its own handler while it runs
                raise BudgetReached("the time budget is spent (before or after the distillation's steps)")

            done = threading.Event()

            def watch() -> None:  # re-reads the deadline: it may be moved while the run goes on
                while not done.wait(0.2):
                    if self.deadline is not None and time.time() >= self.deadline:
                        os.kill(os.getpid(), signal.SIGTERM)
                        return

            previous = signal.signal(signal.SIGTERM, outside_the_loop)
            timer = threading.Thread(target=watch, daemon=True)
            timer.start()
            try:
                yield
            except Interrupted as e:
                if self.deadline is not None and time.time() >= self.deadline:
                    raise BudgetReached(f"the time budget is spent ({e})") from None
                raise
            finally:
                done.set()
                timer.join()
                signal.signal(signal.SIGTERM, previous)
        return guard()

    def cached_eval(self, path: Path, compute) -> dict:
        """One evaluating backbone's probes, kept in the work directory once done (a killed run resumes after it)."""
        from lgm.artifacts import atomic_write_json

        if path.is_file():
            return json.loads(path.read_text())
        self.check_budget()
        result = compute()
        atomic_write_json(path, result)
        return result

    def eval_config(self, backbone: str, repeats: int):
        from lgm.command_configs import EvalConfig

        return EvalConfig(backbone=(backbone,), repeats=repeats, views=self.settings.probe_views,
                          epochs=self.settings.probe_epochs, val_per_class=self.settings.val_per_class,
                          device=self.device, data_root=self.data_root, cache_dir=self.cache_dir)

    def evaluate(self, artifact, backbone: str, repeats: int) -> dict:
        from lgm.evaluate import evaluate_artifact

        t0 = time.perf_counter()
        (r,) = evaluate_artifact(artifact, self.eval_config(backbone, repeats), where=backbone, log=self.log).values()
        return compact_scores(r) | {"seconds": round(time.perf_counter() - t0, 1)}

    # -- checking a committed result

    def recheck(self, name: str, backbones: list[str] | None = None) -> list[dict]:
        """Probe the committed set ``name`` (e.g. ``joint-all_s1``) again from its PNG on each evaluating backbone
        its eval.json holds (or only on ``backbones``); per backbone the committed and the recomputed top-1 of every
        probe seed and their largest difference. Writes nothing but feature-store entries."""
        from lgm.errors import LgmError

        directory = self.results / name
        if not (directory / "set.json").is_file():
            raise LgmError(f"{directory} holds no committed set (set.json); the sets there: "
                           f"{', '.join(committed_sets(self.results)) or 'none'}")
        self._checked(directory, "set.json")
        committed = json.loads((directory / "eval.json").read_text())
        unknown = [b for b in backbones or () if b not in committed]
        if unknown:
            raise LgmError(f"{directory / 'eval.json'} has no probes on {', '.join(unknown)} "
                           f"(it has {', '.join(committed)})")
        artifact = load_result(directory)
        rows = []
        for bb in backbones or list(committed):
            got = self.evaluate(artifact, bb, len(committed[bb]["top1"]["values"]))
            want, now = committed[bb]["top1"]["values"], got["top1"]["values"]
            rows.append({"set": name, "backbone": bb, "committed": want, "recomputed": now,
                         "nn1": (committed[bb].get("nn1"), got.get("nn1")),
                         "max_diff": max(abs(a - b) for a, b in zip(want, now))})
        return rows

    # -- baselines

    def baselines(self, made: list[str]) -> None:
        """Each evaluating backbone's baselines not in the results yet; appends the name of each one made."""
        from lgm.artifacts import DistilledSet
        from lgm.baselines import BaselineConfig, make_baselines
        from lgm.evaluate import evaluate_full_reference, load_full_reference

        d = self.settings.distill
        for bb in self.settings.backbones.values():
            name = f"{BASELINES}_{bb}"
            if self._checked(self.results / name, "baselines.json"):
                continue
            self.check_budget()
            self.log(f"{name}: choosing and probing on {bb}")
            work = self.work / name
            partial = work / "eval"
            paths = make_baselines(BaselineConfig(
                dataset=self.settings.dataset, backbone=bb, ipc=d["ipc"], res=d["res"], crop=d["crop"],
                random_seeds=self.settings.random_selections, val_per_class=self.settings.val_per_class,
                device=self.device, data_root=self.data_root, cache_dir=self.cache_dir, out=str(work / "sets")))
            record: dict = {"backbone": bb, "settings": self.settings.digest(), "random": []}
            for kind, path in paths.items():
                if kind == "full":
                    ref = load_full_reference(path)
                    cfg = self.eval_config(bb, self.settings.repeats)
                    r = self.cached_eval(partial / "full.json", lambda ref=ref, cfg=cfg, bb=bb: compact_scores(
                        evaluate_full_reference(ref, cfg, log=self.log)[bb]))
                    record["full"] = r | {"images": ref["images"]}
                    continue
                art = DistilledSet.load(path)
                repeats = 1 if kind.startswith("random") else self.settings.repeats
                r = self.cached_eval(partial / f"{kind}.json", lambda art=art, n=repeats, bb=bb:
                                     self.evaluate(art, bb, n))
                entry = r | {"indices": art.meta["indices"], "selection": art.meta["selection"]}
                if kind.startswith("random"):
                    record["random"].append(entry | {"seed": art.meta["seed"]})
                else:
                    record[kind] = entry
            write_result_dir(self.results / name, {"baselines.json": dumps(record)})
            self.result_written()
            self.log(f"{name}: done -> {self.results / name}")
            made.append(name)


def committed_sets(results: Path) -> list[str]:
    """The names of the distilled sets in a results area (``<set>_s<seed>``), sorted."""
    return sorted(p.parent.name for p in Path(results).glob("*/set.json"))


def compact_scores(r: dict) -> dict:
    """What a result keeps of lgm's evaluation record: the per-seed numbers and the protocol."""
    keep = ("top1", "top5", "nn1", "epochs", "protocol", "weights", "random_init_backbone", "images")
    return {k: r[k] for k in keep if k in r}


def dumps(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_result_dir(path: Path, files: dict[str, bytes]) -> None:
    """All of a result or none of it: written beside ``path``, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    for name, data in files.items():
        (tmp / name).write_bytes(data)
        os.chmod(tmp / name, 0o644)
    os.chmod(tmp, 0o755)
    if path.exists():  # a result of other settings was refused before; this is a leftover of no record
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)


def png_bytes(images) -> bytes:
    """N x 3 x H x W images in [0, 1] as one 8-bit RGB PNG row (N*W wide), class-major as given."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    x = images.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    row = x.permute(2, 0, 3, 1).reshape(x.shape[2], x.shape[0] * x.shape[3], 3).numpy()
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(row), "RGB").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def png_images(data: bytes, shape):
    """The inverse of ``png_bytes``: float images in [0, 1] of ``shape`` (N x C x H x W, C the original 1 or 3)."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    n, c, h, w = shape
    row = torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy())
    x = row.reshape(h, n, w, 3).permute(1, 3, 0, 2).float() / 255
    return x[:, :1] if c == 1 else x


def load_result(directory: str | Path):
    """A committed set as an lgm artifact (``DistilledSet``), e.g. to probe it again or on another backbone."""
    from lgm.artifacts import DistilledSet

    directory = Path(directory)
    record = json.loads((directory / "set.json").read_text())
    data = (directory / "images.png").read_bytes()
    if hashlib.sha256(data).hexdigest() != record["images_png_sha256"]:
        from lgm.errors import CorruptFileError

        raise CorruptFileError(f"{directory / 'images.png'} is not the image its set.json was written with")
    res = record["config"]["res"]
    import torch

    images = png_images(data, (len(record["labels"]), 3, res, res))
    meta = {"kind": "distilled", "dataset": record["config"]["dataset"], "config": record["config"],
            "backbone": record["backbones"] if record["schedule"] else record["backbones"][0]}
    return DistilledSet(images, torch.tensor(record["labels"]), record["class_names"], meta)


# ----------------------------------------------------------------------------------------------- the table


def cell(values: list[float], bold: bool = False) -> str:
    if not values:
        return "–"
    text = f"{statistics.fmean(values) * 100:.1f}"
    if len(values) > 1:
        text += f" ± {statistics.pstdev(values) * 100:.1f}"
    return f"**{text}**" if bold else text


SET_LABELS = {"lite0": "single, {a}", "opennsfw": "single, {b}", "joint-all": "joint `all` ({a} + {b})",
              "joint-sample": "joint `sample` ({a} + {b})"}


def count(n: int, what: str) -> str:
    return f"{n} {what}" + ("s" if n != 1 else "")


def seed_records(results: Path, set_name: str) -> dict[int, tuple[dict, dict]]:
    """seed -> (set.json, eval.json) of every committed result of ``set_name``, by seed."""
    found = {}
    for d in results.glob(f"{set_name}_s*"):
        if (d / "set.json").is_file() and d.name[len(set_name) + 2:].isdigit():
            record = json.loads((d / "set.json").read_text())
            found[record["seed"]] = (record, json.loads((d / "eval.json").read_text()))
    return dict(sorted(found.items()))


def target_check(results: Path, settings: Settings = SETTINGS) -> str:
    """Issue 22's target, paired by distillation seed: each joint set against the single sets of the same seed.

    A seed counts once every set it needs is in; "met" means every criterion holds in that seed.
    """
    a, b = settings.backbones["a"], settings.backbones["b"]
    names = [settings.backbones[r] for r in ROLES]
    single_a, single_b = seed_records(results, "lite0"), seed_records(results, "opennsfw")
    base_b = results / f"{BASELINES}_{b}" / "baselines.json"
    centroids_b = (statistics.fmean(json.loads(base_b.read_text())["centroids"]["top1"]["values"]) * 100
                   if base_b.is_file() else None)

    def top1(ev: dict, n: str) -> float:
        return ev[n]["top1"]["mean"] * 100

    def mean(ev: dict) -> float:
        return statistics.fmean(top1(ev, n) for n in names)

    # (label, threshold, strict, the difference from the joint set's eval and the seed's single evals)
    criteria = (
        (f"on {a}: joint − single {a} (≥ −2)", -2.0, False, lambda ev, ea, eb: top1(ev, a) - top1(ea, a)),
        (f"on {b}: joint − single {b} (≥ −2)", -2.0, False, lambda ev, ea, eb: top1(ev, b) - top1(eb, b)),
        ("mean of the three: joint − the better single set (> 0)", 0.0, True,
         lambda ev, ea, eb: mean(ev) - max(mean(ea), mean(eb))),
        (f"on {b}: joint − {b}'s centroids (> 0)", 0.0, True, lambda ev, ea, eb: top1(ev, b) - centroids_b),
    )
    joints = [s for s, (roles, _) in SETS.items() if len(roles) > 1]
    paired = {}  # joint set -> seed -> the criteria's differences
    for j in joints:
        paired[j] = {seed: [f(ev, single_a[seed][1], single_b[seed][1]) for _, _, _, f in criteria]
                     for seed, (_, ev) in seed_records(results, j).items()
                     if seed in single_a and seed in single_b and centroids_b is not None}
    labels = [SET_LABELS[j].split(" (")[0] for j in joints]
    lines = ["| target, paired by distillation seed | " + " | ".join(labels) + " |", "|" + "---|" * (1 + len(joints))]
    for i, (label, _, _, _) in enumerate(criteria):
        cells = [", ".join(f"s{seed} {d[i]:+.1f}" for seed, d in paired[j].items()) or "–" for j in joints]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def holds(d: list[float]) -> bool:
        return all(v > t if strict else v >= t for v, (_, t, strict, _) in zip(d, criteria))

    met = [f"in {sum(holds(d) for d in paired[j].values())} of {count(len(paired[j]), 'seed')}" if paired[j] else "–"
           for j in joints]
    lines.append("| **all four met** | " + " | ".join(met) + " |")
    return "\n".join(lines)


def table(results: Path, settings: Settings = SETTINGS) -> str:
    """The markdown table of every result in ``results`` (reads the JSON files only)."""
    names = [settings.backbones[r] for r in ROLES]
    head = ["set", "seeds", *(f"on {n}" + (" (held out)" if r == "held_out" else "") for r, n in zip(ROLES, names)),
            "mean", "distillation (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for set_name, (roles, _) in SETS.items():
        records = list(seed_records(results, set_name).values())
        own = {settings.backbones[r] for r in roles}
        per_bb = {n: [ev[n]["top1"]["mean"] for _, ev in records] for n in names}
        means = [statistics.fmean(ev[n]["top1"]["mean"] for n in names) for _, ev in records]
        minutes = [rec["seconds"] / 60 for rec, _ in records]
        lo, hi = (f"{min(minutes):.0f}", f"{max(minutes):.0f}") if minutes else ("–", "–")
        span = lo if lo == hi else f"{lo}–{hi}"
        label = SET_LABELS[set_name].format(**settings.backbones)
        lines.append(f"| {label} | {','.join(str(rec['seed']) for rec, _ in records) or '–'} | "
                     + " | ".join(cell(per_bb[n], n in own) for n in names)
                     + f" | {cell(means)} | {span} |")
    base = {n: json.loads(p.read_text()) if (p := results / f"{BASELINES}_{n}" / "baselines.json").is_file() else None
            for n in names}
    rows = ((f"centroids (chosen on the evaluating backbone, {count(settings.repeats, 'probe seed')})",
             lambda b: b["centroids"]["top1"]["values"]),
            (f"random real ({count(settings.random_selections, 'selection')})",
             lambda b: [r["top1"]["mean"] for r in b["random"]]),
            ("full training set", lambda b: b["full"]["top1"]["values"]))
    for label, values in rows:
        lines.append(f"| {label} | | " + " | ".join(cell(values(base[n]) if base[n] else []) for n in names)
                     + " | | |")
    return "\n".join(lines) + "\n\n" + target_check(results, settings)


def write_doc_table(doc: Path, results: Path, settings: Settings = SETTINGS) -> None:
    text = doc.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        from lgm.errors import LgmError

        raise LgmError(f"{doc} lacks the table markers {DOC_BEGIN!r} ... {DOC_END!r}")
    before, rest = text.split(DOC_BEGIN, 1)
    _, after = rest.split(DOC_END, 1)
    new = before + DOC_BEGIN + "\n" + table(results, settings) + "\n" + DOC_END + after
    if new != text:
        from lgm.artifacts import atomic_write_text

        atomic_write_text(doc, new)


def doc_table(doc: Path) -> str:
    """The table held between the markers of ``doc``."""
    text = doc.read_text()
    return text.split(DOC_BEGIN, 1)[1].split(DOC_END, 1)[0].strip("\n")


# ----------------------------------------------------------------------------------------------- the command


def recheck_command(args, settings: Settings) -> int:
    from lgm.errors import LgmError

    names = committed_sets(args.results) if args.recheck == "all" else [n for n in args.recheck.split(",") if n]
    exp = Experiment(settings, args.work or Path(tempfile.gettempdir()), args.results, args.data_root,
                     args.cache_dir, args.device)
    moved = 0
    try:
        for name in names:
            for row in exp.recheck(name, args.on):
                same = row["max_diff"] == 0
                ok = row["max_diff"] <= args.tolerance
                moved += not ok
                verdict = "bit for bit" if same else f"largest difference {100 * row['max_diff']:.2f} points"
                print(f"{name} on {row['backbone']}: {verdict} "
                      f"({'ok' if ok else 'MOVED'}; committed {fmt_top1(row['committed'])}, "
                      f"now {fmt_top1(row['recomputed'])}; 1-NN {row['nn1'][0]} / {row['nn1'][1]})")
    except LgmError as e:
        print(f"joint_experiment: error: {e}", file=sys.stderr)
        return 1
    return 1 if moved else 0


def fmt_top1(values: list[float]) -> str:
    return " ".join(f"{100 * v:.2f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, help="work directory (run directories, partial evaluations)")
    ap.add_argument("--results", type=Path, default=Path(__file__).resolve().parent.parent / "docs/results/joint")
    ap.add_argument("--doc", type=Path, action="append", help="markdown file whose table (between the markers) "
                    "is rewritten; repeat for several")
    ap.add_argument("--seeds", default="0,1,2", help="distillation seeds, comma-separated")
    ap.add_argument("--sets", default=",".join([BASELINES, *SETS]), help=f"of {BASELINES},{','.join(SETS)}")
    ap.add_argument("--max-sets", type=int, default=0, help="stop after finishing this many tasks (0: all)")
    ap.add_argument("--budget-hours", type=float, default=0, help="no task starts after this; a running "
                    "distillation checkpoints and stops (0: no limit)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data-root")
    ap.add_argument("--cache-dir", help="feature store and real caches (default $LGM_CACHE_DIR, else ~/.cache/lgm)")
    ap.add_argument("--table", action="store_true", help="print the table of --results (and write it into --doc) "
                    "and exit")
    ap.add_argument("--recheck", metavar="SET[,SET]", help="probe committed sets (e.g. joint-all_s1, or 'all') "
                    "again from their PNGs and compare with their eval.json; exit 1 if a probe seed's top-1 moved by "
                    "more than --tolerance")
    ap.add_argument("--on", metavar="BACKBONE", action="append", help="with --recheck: only this evaluating "
                    "backbone (repeatable; default every one the set's eval.json holds)")
    ap.add_argument("--tolerance", type=float, default=0.0, help="with --recheck: the largest difference in top-1 "
                    "(a fraction; 0: bit for bit, as on the machine type that made the result) still accepted")
    ap.add_argument("--smoke", action="store_true", help="toy backbones, tiny data in a temporary directory")
    args = ap.parse_args(argv)
    from lgm.errors import LgmError
    from lgm.rundir import Interrupted

    settings = SMOKE_SETTINGS if args.smoke else SETTINGS
    if args.smoke:
        register_smoke_backbones()
    if args.table:
        print(table(args.results, settings))
        for doc in args.doc or []:
            write_doc_table(doc, args.results, settings)
        return 0
    if args.recheck:
        return recheck_command(args, settings)
    sets = [s for s in args.sets.split(",") if s]
    unknown = [s for s in sets if s not in SETS and s != BASELINES]
    if unknown:
        ap.error(f"unknown set(s) {', '.join(unknown)}; choose from {BASELINES}, {', '.join(SETS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            import _smoke

            args.data_root = args.data_root or _smoke.fashion_fixture(Path(tmp) / "data")
            args.cache_dir = args.cache_dir or str(Path(tmp) / "cache")
            args.work = args.work or Path(tmp) / "work"
            if args.results == ap.get_default("results"):
                args.results = Path(tmp) / "results"
        if args.work is None:
            ap.error("--work DIR is required (where run directories and partial evaluations live)")
        deadline = time.time() + args.budget_hours * 3600 if args.budget_hours else None
        exp = Experiment(settings, args.work, args.results, args.data_root, args.cache_dir, args.device, args.doc,
                         deadline)
        try:
            made = exp.run(plan(sets, seeds), args.max_sets)
        except Interrupted as e:  # SIGINT/SIGTERM during a distillation: its checkpoint is on disk
            print(f"joint_experiment: {e}", file=sys.stderr)
            return e.exit_code
        except LgmError as e:
            print(f"joint_experiment: error: {e}", file=sys.stderr)
            return 1
        print(f"made now: {', '.join(made) or 'nothing'}")
        print(table(args.results, settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
