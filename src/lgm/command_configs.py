"""The settings of lgm's commands, as typed, frozen dataclasses (distillation's own are in :mod:`lgm.config`).

They live here, apart from the code that runs them, so that the command line
parses its arguments (and answers ``--help``) without importing torch; each
command's module re-exports its config under the old name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lgm.backbone_spec import BackboneFlags
from lgm.errors import UsageError

if TYPE_CHECKING:
    from lgm.augment import AugmentConfig
    from lgm.probe import ProbeConfig


@dataclass(frozen=True)
class EvalConfig(BackboneFlags):
    """Linear-probe evaluation of artifacts on the real test split (SPEC §6)."""

    backbone: tuple[str, ...] = ()
    """Backbones to probe on (repeatable); default: the artifact's own."""
    dataset: str | None = None
    """Dataset whose test split scores the probes; default: the artifact's."""
    repeats: int = 5
    """Probe seeds (each draws its own augmented views)."""
    protocol: Literal["spec", "authors"] = "spec"
    """spec: SPEC §6 (validation early stopping, noise augmentation); authors: their evaluation loop
    (lr 0.001*min(100, N)/256, N(0, 0.01^2) head, per-epoch cosine, unclamped crops, no noise, a fresh view
    every epoch, last epoch)."""
    views: int = 0
    """Augmented views per training image in the probe's view pool (0 = the protocol's: spec 100; authors
    --epochs, a fresh view every epoch)."""
    epochs: int = 1000
    """Maximum probe epochs."""
    res: int = 0
    """Resolution images are resized to (0 = the artifact's distillation resolution)."""
    crop: int = 0
    """Training crop and test center crop (0 = the artifact's)."""
    val_per_class: int = 100
    """Validation images per class carved from the training set for early stopping."""
    device: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    """Where test/validation features are stored (default $LGM_CACHE_DIR or ~/.cache/lgm)."""
    cache: bool = True
    """Store and reuse test/validation features on disk (--no-cache recomputes)."""
    on_bad_image: Literal["fail", "skip"] = "fail"
    """Unreadable/corrupt image files in the dataset: stop naming them, or skip them with a warning."""

    def probe(self) -> ProbeConfig:
        from lgm.probe import ProbeConfig

        return ProbeConfig.named(self.protocol, views=self.views, epochs=self.epochs)


@dataclass(frozen=True)
class BaselineConfig(BackboneFlags):
    """Real-image baselines for a dataset and backbone (artifacts for `lgm eval`)."""

    dataset: str
    backbone: str
    ipc: int = 1
    """Images per class."""
    out: str = "runs/baselines"
    """Directory receiving one artifact per baseline."""
    random_seeds: int = 10
    """Random selections (one artifact per seed)."""
    distilled: str | None = None
    """A distilled artifact: adds the neighbors baseline (its images' nearest real images)."""
    res: int = 0
    """Resolution of the stored images and of the selection features (0 = the distilled artifact's, else 256)."""
    crop: int = 0
    """Center crop of the selection features (0 = the distilled artifact's, else 224)."""
    val_per_class: int = 100
    """Validation images per class held out (never selected), as in `lgm eval`."""
    device: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    cache: bool = True
    on_bad_image: Literal["fail", "skip"] = "fail"
    """Unreadable/corrupt image files: stop naming them, or skip them with a warning."""


@dataclass(frozen=True)
class CacheFeaturesConfig:
    """Cache the backbone features of augmented views of a dataset's training images (resumable)."""

    dataset: str
    """Dataset name (see `lgm datasets`)."""
    backbone: str
    """Backbone name (see `lgm backbones`)."""
    views: int = 2
    """Augmented views of every training image."""
    res: int = 256
    """Resolution the real images are loaded at (the distillation run's --res)."""
    crop: int = 224
    """Side of the augmented crop fed to the backbone (the distillation run's --crop)."""
    per_class: int = 0
    """Training images per class (0 = all; a seeded stratified subset otherwise)."""
    seed: int = 0
    """Seed of the per-class selection and of every augmentation draw."""
    aug: Literal["standard", "none"] = "standard"
    """Augmentation (as in `lgm distill`)."""
    clamp_crop: bool = True
    """Clamp crop boxes to the image (as in `lgm distill`)."""
    noise_std: float = 0.2
    """Noise std (as in `lgm distill`)."""
    noise_mean: float = 0.0
    """Noise mean (as in `lgm distill`)."""
    random_init: bool = False
    """Randomly initialized backbone (tests/benchmarks)."""
    weights: str | None = None
    """Local weights file for the backbone."""
    normalization: Literal["native", "imagenet"] = "native"
    """Backbone input statistics."""
    batch: int = 500
    """Images per chunk (the unit of progress: an interrupted build resumes at a chunk boundary)."""
    cache_dir: str | None = None
    """Root of lgm's caches (default: $LGM_CACHE_DIR, else ~/.cache/lgm); the cache goes to <root>/real/<id>."""
    out: str | None = None
    """Explicit cache directory (instead of <cache-dir>/real/<id>)."""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """Mixed precision: auto = bf16 autocast on CUDA, full precision on CPU."""
    device: str = "auto"
    """auto (CUDA when available), cpu, cuda or cuda:N."""
    data_root: str | None = None
    """Directory holding datasets (default: $LGM_DATA_ROOT, then each dataset's standard location)."""
    on_bad_image: Literal["fail", "skip"] = "fail"
    """Unreadable/corrupt image files: stop naming them, or leave them out with a warning listing them."""
    progress: bool = True
    """Show a progress bar."""

    def augment_config(self) -> AugmentConfig:
        from lgm.augment import AugmentConfig

        return AugmentConfig(kind=self.aug, clamp_crop=self.clamp_crop, noise_std=self.noise_std,
                             noise_mean=self.noise_mean)

    def validate(self) -> None:
        from lgm.config import nonfinite_options

        problems = nonfinite_options(self)
        if self.noise_std < 0:
            problems.append(f"--noise-std must be >= 0, got {self.noise_std}")
        problems += [f"--{k.replace('_', '-')} must be positive, got {getattr(self, k)}"
                     for k in ("views", "res", "crop", "batch") if getattr(self, k) <= 0]
        if self.per_class < 0:
            problems.append(f"--per-class must be >= 0, got {self.per_class}")
        if self.crop > self.res:
            problems.append(f"--crop ({self.crop}) cannot exceed --res ({self.res})")
        if problems:
            raise UsageError("invalid cache-features settings:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class AlignConfig(BackboneFlags):
    """Mutual k-NN alignment between backbones on the same real training images (SPEC §8)."""

    dataset: str
    backbones: tuple[str, ...]
    """Two or more backbones."""
    k: int = 10
    """Neighbours per sample."""
    n: int = 5000
    """Training images (stratified: n // classes per class, seeded)."""
    seed: int = 0
    """Seed of the image selection."""
    res: int = 224
    """Images are resized to res (each backbone then resizes to its own input size)."""
    crop: int = 224
    """Center crop after the resize."""
    out: str = "runs/align"
    """Directory receiving alignment.json, alignment.csv, alignment.md and alignment.png."""
    device: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    """Where features are stored (default $LGM_CACHE_DIR or ~/.cache/lgm)."""
    cache: bool = True
    """Store and reuse features on disk (--no-cache recomputes)."""
    on_bad_image: Literal["fail", "skip"] = "fail"


@dataclass(frozen=True)
class RunSource(BackboneFlags):
    """The flags of an analysis that reads one run: whose embedding space, and where its data and features live."""

    backbone: str | None = None
    """Embedding space (default: the backbone the run distilled with)."""
    device: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    cache: bool = True
    on_bad_image: Literal["fail", "skip"] = "fail"


@dataclass(frozen=True)
class PcaConfig(RunSource):
    """2-D PCA of real training embeddings by class with the distilled embeddings marked (paper's Figure 4)."""

    n: int = 5000
    """Real training images (seeded stratified sample; 0 = all)."""
    seed: int = 0
    out: str | None = None
    """Directory for pca.png and pca.json (default: <run>/analysis)."""


@dataclass(frozen=True)
class NeighborsConfig(RunSource):
    """Each distilled image beside its nearest real training image (cosine, backbone space), with the similarity."""

    n: int = 0
    """Training images searched (0 = all; else a seeded stratified sample)."""
    seed: int = 0
    same_class: bool = False
    """Search only the distilled image's class (default: every training image)."""
    out: str | None = None
    """Directory for neighbors.png and neighbors.json (default: <run>/analysis)."""


# 500 steps: 750 and 1,500 gave the same probe accuracy within noise (docs/results.md), over two seeds.
DEMO_DISTILL = dict(dataset="fashion-mnist", backbone="effnet_lite0", ipc=1, steps=500, augs=4,
                    lr=1e-2, init="real", res=128, crop=128, real_aug="none", real_features="cached", real_gradient="full",
                    cache_per_class=1000, cache_views=1)


@dataclass(frozen=True)
class DemoConfig:
    """The offline default: EfficientNet-Lite0 on Fashion-MNIST, 1 image per class, ~5 min of distillation on 2 cores."""

    out: str = "runs/demo"
    """Directory of the demo (the distillation run lives in OUT/distill)."""
    steps: int = DEMO_DISTILL["steps"]
    """Distillation steps."""
    augs: int = DEMO_DISTILL["augs"]
    """Augmented views of the synthetic set per step."""
    lr: float = DEMO_DISTILL["lr"]
    """Adam learning rate of the distillation."""
    init: Literal["noise", "real"] = DEMO_DISTILL["init"]
    """Start from one seeded random training image per class (real: about 2.5 points better here) or from noise (paper)."""
    res: int = DEMO_DISTILL["res"]
    """Synthetic resolution (Fashion-MNIST's 28 px images are upsampled to it; 128 px: about 5 points above 64 px)."""
    crop: int = DEMO_DISTILL["crop"]
    """Crop fed to the backbone (training views and test center crop)."""
    real_aug: Literal["same", "none"] = DEMO_DISTILL["real_aug"]
    """Real images seen whole at --crop (none: the probe's test view, about 2 points better here) or augmented
    like the synthetic views (same: the paper)."""
    real_gradient: Literal["batch", "full"] = DEMO_DISTILL["real_gradient"]
    """full: the exact gradient over the whole feature cache each step; batch: a sampled --real-batch."""
    real_batch: int = 0
    """Cached real views per step with --real-gradient batch (0 = ipc*augs*classes)."""
    cache_per_class: int = DEMO_DISTILL["cache_per_class"]
    """Training images per class in the real-feature cache."""
    cache_views: int = DEMO_DISTILL["cache_views"]
    """Views per cached training image (1 is enough with --real-aug none: the views are identical and copied)."""
    head_source: Literal["random", "trajectory"] = "random"
    """Head per distillation step: random (the paper's N(0, 0.01^2)) or trajectory (snapshots of a probe trained on
    the real feature cache; see `lgm distill --head-source`)."""
    seed: int = 0
    """Seed of the distillation."""
    repeats: int = 5
    """Probe repeats for the distilled set (probe seeds) and for random real selections (selection seeds)."""
    val_per_class: int = 100
    """Training images per class held out for the probes' early stopping (never the test split)."""
    probe_views: int = 100
    """Augmented views per image when probing a 1-image-per-class set."""
    full_train: int = 0
    """Training images for the full-dataset reference probe (0 = all)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    data_root: str | None = None
    """Directory holding fashion-mnist/ (default: $LGM_DATA_ROOT, then the Debian package's location)."""
    progress: bool = True
    """Show progress bars."""


CeilingInit = Literal["real", "means", "noise"]


@dataclass(frozen=True)
class CeilingConfig(BackboneFlags):
    """The feature-space ceiling for a dataset and backbone: C·ipc free feature vectors optimized with the meta
    loss against the full real gradient, then probed on the real test features (ceiling.json, ceiling.md)."""

    dataset: str
    """Dataset name (see `lgm datasets`)."""
    backbone: str
    """Backbone name (see `lgm backbones`)."""
    ipc: int = 1
    """Points per class."""
    steps: int = 2000
    """Adam steps on the points (one random head each)."""
    lr: float = 0.01
    """Adam learning rate, in units of the real features' standard deviation."""
    head_init: Literal["normal001", "normal1", "torch"] = "normal001"
    """Random head per step, as `lgm distill --head-init`."""
    init: CeilingInit = "real"
    """Start: ipc seeded random real rows per class (real, like `lgm distill --init real`), the class means, or noise."""
    seed: int = 0
    """Seed of the start, the heads, and (unless --subset-seed) the --per-class selection."""
    heads: int = 1
    """Heads per step, the loss averaged over them (trajectory: 0 = every snapshot every step)."""
    head_source: Literal["random", "trajectory"] = "random"
    """random: a fresh --head-init head per step (distillation's); trajectory: snapshots of a probe trained on
    the real features (Adam from zero at the probe's lr 3.9e-4, batches of 100) after --trajectory-steps steps."""
    head_scale: float = 1.0
    """Random heads multiplied by this."""
    trajectory_steps: tuple[int, ...] = (0, 5, 20, 50, 100)
    """Adam steps of the real-feature probe at which its head is kept (--head-source trajectory)."""
    head_noise: float = 0.0
    """Std of Gaussian noise on a trajectory snapshot's W (absolute)."""
    unroll: int = 0
    """Extra matching points per head: the heads after 1..N sign steps along the synthetic points' gradient."""
    unroll_lr: float = 0.02
    """Size of each unroll step per coordinate."""
    subset_seed: int | None = None
    """Seed of the --per-class selection (default --seed): vary --seed over one fixed set of real rows."""
    per_class: int = 0
    """Real rows of the gradient: 0 = every training image outside the validation split; N = the seeded subset
    of N per class that `lgm distill --cache-per-class N --seed S` caches (the demo: 1000)."""
    res: int = 256
    """Resolution the real images are loaded at (the distillation's --res)."""
    crop: int = 224
    """Center crop fed to the backbone (the distillation's --crop; with --res equal to it, the features of
    `--real-aug none`)."""
    repeats: int = 5
    """Probe seeds."""
    protocol: Literal["spec", "authors"] = "spec"
    """Probe protocol (as `lgm eval`), on one fixed view per point."""
    epochs: int = 1000
    """Maximum probe epochs."""
    val_per_class: int = 100
    """Validation images per class for the probe's early stopping (as `lgm eval`)."""
    eval_heads: int = 64
    """Held-out random heads on which every set's meta loss is reported (0 = skip)."""
    full: bool = True
    """Also train the full-dataset probe on the same real rows (the reference the ceiling is a share of)."""
    out: str = "runs/ceiling"
    """Directory receiving ceiling.json, ceiling.md and ceiling_features.safetensors."""
    device: str = "auto"
    data_root: str | None = None
    cache_dir: str | None = None
    """Root of the feature store (default: $LGM_CACHE_DIR, else ~/.cache/lgm)."""
    cache: bool = True
    """Store and reuse the real, test and validation features (--no-cache recomputes)."""
    on_bad_image: Literal["fail", "skip"] = "fail"
    """Unreadable/corrupt image files: stop naming them, or skip them with a warning."""

    def objective(self):
        from lgm.objectives import MatchObjective

        return MatchObjective(heads=self.heads, head_source=self.head_source, head_scale=self.head_scale,
                              trajectory_steps=tuple(self.trajectory_steps), head_noise=self.head_noise,
                              unroll=self.unroll, unroll_lr=self.unroll_lr)
