"""The `lgm` command: thin wrappers that build configs and call the library."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from lgm.analysis.ablate import AblateConfig
from lgm.analysis.report import ReportConfig
from lgm.analysis.transfer import AlignmentVsTransferCommand
from lgm.command_configs import (AlignConfig, BaselineConfig, CacheFeaturesConfig, CeilingConfig, DemoConfig,
                                 EvalConfig, NeighborsConfig, PcaConfig)
from lgm.config import DistillConfig
from lgm.errors import LgmError, UsageError


@dataclass(frozen=True)
class DistillCommand:
    """Distill a dataset into ipc synthetic images per class for a frozen backbone (or several, jointly).

    Several backbones (--backbone A --backbone B, or --backbone A,B) distill one
    set matched on all of them (--backbone-weights, --backbone-schedule).

    Re-running the same command on the same --out resumes from the last
    checkpoint; a finished run is not redone.
    """

    config: Annotated[DistillConfig, tyro.conf.OmitArgPrefixes]
    out: str
    """Run directory (config.json, metrics.jsonl, checkpoint, distilled.safetensors/.json, grid.png)."""


@dataclass(frozen=True)
class EvalCommand:
    """Train linear probes on artifacts (distilled sets or baseline selections) and score them on the test split.

    Results (top-1/top-5 mean ± std over repeats, 1-NN) are printed and written
    to eval.json next to each artifact.
    """

    artifacts: tyro.conf.Positional[tuple[str, ...]]
    """Run directories or .safetensors/.json artifact files."""
    config: Annotated[EvalConfig, tyro.conf.OmitArgPrefixes] = EvalConfig()
    json: bool = False
    """Print the results as JSON instead of a table."""


@dataclass(frozen=True)
class CrossModelCommand:
    """Evaluate every artifact on every backbone: the cross-model matrix (paper's Table 2) as JSON, CSV, markdown."""

    artifacts: tyro.conf.Positional[tuple[str, ...]]
    """Run directories or artifact files (one row each)."""
    config: Annotated[EvalConfig, tyro.conf.OmitArgPrefixes] = EvalConfig()
    out: str = "runs/crossmodel"
    """Directory receiving crossmodel.json, crossmodel.csv and crossmodel.md."""


@dataclass(frozen=True)
class PcaCommand:
    """2-D PCA of the real training embeddings by class with the distilled embeddings marked (paper's Figure 4),
    and each distilled embedding's distance from its class centroid in class spreads (pca.png, pca.json)."""

    run: tyro.conf.Positional[str]
    """Run directory or artifact file."""
    config: Annotated[PcaConfig, tyro.conf.OmitArgPrefixes] = PcaConfig()


@dataclass(frozen=True)
class NeighborsCommand:
    """Each distilled image beside its nearest real training image in the backbone's space (paper's Figure 8),
    with the cosine similarity (neighbors.png, neighbors.json)."""

    run: tyro.conf.Positional[str]
    """Run directory or artifact file."""
    config: Annotated[NeighborsConfig, tyro.conf.OmitArgPrefixes] = NeighborsConfig()


@dataclass(frozen=True)
class ExportCommand:
    """Distilled images as files: --png DIR (one PNG per image named by class, plus grid.png) and/or
    --timelapse OUT.gif (the snapshots kept with --snapshot-every during distillation)."""

    run: tyro.conf.Positional[str]
    """Run directory (or artifact file for --png)."""
    png: str | None = None
    """Directory receiving NNN_<class>.png for every image and grid.png."""
    timelapse: str | None = None
    """GIF file: one frame per snapshot of the run."""
    frame_ms: int = 200
    """Milliseconds per timelapse frame."""


@dataclass(frozen=True)
class ReportCommand:
    """Self-contained static HTML reports (images embedded, no network, no JavaScript): one page per run
    (config, meta-loss curve, images, evaluation, PCA, neighbours, provenance) and index.html across runs."""

    runs: tyro.conf.Positional[tuple[str, ...]]
    """Run directories."""
    config: Annotated[ReportConfig, tyro.conf.OmitArgPrefixes] = ReportConfig()


@dataclass(frozen=True)
class ListBackbones:
    """List the registered backbones."""


@dataclass(frozen=True)
class ListDatasets:
    """List the registered datasets: classes, split sizes, and whether (and where) each is found.

    With --check NAME, load that dataset (a registered name or folder:PATH),
    decode every image once and report its classes, split sizes and bad files.
    """

    data_root: str | None = None
    """Directory holding datasets (default: $LGM_DATA_ROOT, then each dataset's standard location)."""
    brief: bool = False
    """One line per dataset (leave out the expected on-disk layout and the origin)."""
    check: str | None = None
    """Load and verify this dataset instead of listing."""
    on_bad_image: Literal["fail", "skip"] = "fail"
    """With --check: stop at bad image files (listing them), or leave them out and report them."""


def _run(cmd) -> int:
    if isinstance(cmd, DistillCommand):
        from lgm.distillation import distill
        from lgm.distributed import SINGLE, init_from_env, shutdown

        shard = SINGLE
        try:
            shard, _ = init_from_env(cmd.config.device)  # torchrun: join the group (distill reuses it)
            distill(cmd.config.dataset, cmd.config.backbone, cmd.config, out=cmd.out)
        finally:
            shutdown(shard)
    elif isinstance(cmd, EvalCommand):
        from lgm.evaluate import run_eval

        run_eval(cmd.artifacts, cmd.config, as_json=cmd.json)
    elif isinstance(cmd, CrossModelCommand):
        from pathlib import Path

        from lgm.evaluate import crossmodel_matrix

        crossmodel_matrix(cmd.artifacts, cmd.config, Path(cmd.out),
                          log=lambda m: print(f"lgm crossmodel: {m}", file=sys.stderr, flush=True))
        print((Path(cmd.out) / "crossmodel.md").read_text())
    elif isinstance(cmd, CacheFeaturesConfig):
        from lgm.real_cache import run_cache_features

        run_cache_features(cmd)
    elif isinstance(cmd, AlignConfig):
        from lgm.analysis.alignment import matrix_markdown, run_align

        r = run_align(cmd)
        print(matrix_markdown(r["backbones"], r["matrix"], "{:.3f}"))
        print(f"\nmutual {r['k']}-NN alignment on {r['n']} {r['dataset']} training images; files in {cmd.out}")
    elif isinstance(cmd, AlignmentVsTransferCommand):
        from lgm.analysis.transfer import alignment_vs_transfer

        print(alignment_vs_transfer(cmd.crossmodel_json, cmd.align_json, cmd.metric, cmd.out)["markdown"])
    elif isinstance(cmd, PcaCommand):
        from lgm.analysis.pca import run_pca

        r = run_pca(cmd.run, cmd.config)
        for d in r["distilled"]:
            print(f"{d['index']:4d} {d['class']:24s} {d['distance_in_spreads']:.2f} spreads from the centroid, "
                  f"{d['fraction_of_class_closer'] * 100:.0f}% of the class closer")
    elif isinstance(cmd, NeighborsCommand):
        from lgm.analysis.neighbors import run_neighbors

        r = run_neighbors(cmd.run, cmd.config)
        for p in r["pairs"]:
            print(f"{p['index']:4d} {p['class']:24s} -> train #{p['neighbor_train_index']} ({p['neighbor_class']}), "
                  f"cosine {p['cosine']:.3f}")
    elif isinstance(cmd, ExportCommand):
        from lgm.analysis.export import export_pngs, export_timelapse

        if not cmd.png and not cmd.timelapse:
            raise UsageError("lgm export: give --png DIR and/or --timelapse OUT.gif")
        if cmd.png:
            paths = export_pngs(cmd.run, cmd.png)
            print(f"{len(paths) - 1} images and grid.png in {cmd.png}")
        if cmd.timelapse:
            print(f"timelapse: {export_timelapse(cmd.run, cmd.timelapse, cmd.frame_ms)}")
    elif isinstance(cmd, ReportCommand):
        from lgm.analysis.report import write_reports

        pages = write_reports(cmd.runs, cmd.config)
        print(f"{len(pages) - 1} report page(s); open {pages[-1]}")
    elif isinstance(cmd, AblateConfig):
        from lgm.analysis.ablate import run_ablation

        print(run_ablation(cmd)["markdown"])
    elif isinstance(cmd, BaselineConfig):
        from lgm.baselines import make_baselines

        make_baselines(cmd)
    elif isinstance(cmd, CeilingConfig):
        from lgm.analysis.ceiling import run_ceiling

        run_ceiling(cmd)
    elif isinstance(cmd, DemoConfig):
        from lgm.demo import run_demo

        run_demo(cmd)
    elif isinstance(cmd, ListBackbones):
        from lgm.backbones import list_backbones, weights_on_disk

        row = "{:22s} {:>5s} {:>5s}  {:7s}  {:40s}  {}"
        print(row.format("name", "dim", "input", "on disk", "normalization (native)", "weights from"))
        for info in list_backbones():
            on_disk = "yes" if weights_on_disk(info.name) else "no"
            print(row.format(info.name, str(info.feature_dim), str(info.input_size or "any"), on_disk,
                             info.normalization, info.weights))
        print("timm:<model_name>      any timm model: pooled pre-logits, timm's mean/std and input size, "
              "weights from the HF cache or --weights")
        print("Options: --weights PATH, --random-init; Python: load_backbone(name, normalization='imagenet', "
              "input_size=..., grad_checkpointing=True)")
    elif isinstance(cmd, ListDatasets):
        from lgm.data.catalog import check_dataset, list_datasets

        if cmd.check:
            check_dataset(cmd.check, cmd.data_root, cmd.on_bad_image)
        else:
            list_datasets(cmd.data_root, cmd.brief)
    return 0


def merge_repeated_flag(argv: list[str], flag: str = "--backbone") -> list[str]:
    """``--backbone A --backbone B`` -> ``--backbone A B``: argparse would silently keep only the last one."""
    hits = [a for a in argv if a == flag or a.startswith(flag + "=")]
    if len(hits) < 2:
        return argv
    out, values, first, i = [], [], None, 0
    while i < len(argv):
        a = argv[i]
        if a == flag or a.startswith(flag + "="):
            if first is None:
                first = len(out)
                out.append(flag)
            i += 1
            if a != flag:
                values.append(a.split("=", 1)[1])
                continue
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            continue
        out.append(a)
        i += 1
    return out[: first + 1] + values + out[first + 1:]


def main(argv: list[str] | None = None) -> int:
    argv = merge_repeated_flag(list(sys.argv[1:] if argv is None else argv))
    if argv[:1] in (["--version"], ["-V"]):
        from lgm.version import __version__

        print(f"lgm {__version__}")
        return 0
    cmd = tyro.extras.subcommand_cli_from_dict(
        {
            "distill": DistillCommand,
            "cache-features": CacheFeaturesConfig,
            "eval": EvalCommand,
            "baselines": BaselineConfig,
            "crossmodel": CrossModelCommand,
            "align": AlignConfig,
            "alignment-vs-transfer": AlignmentVsTransferCommand,
            "pca": PcaCommand,
            "neighbors": NeighborsCommand,
            "export": ExportCommand,
            "report": ReportCommand,
            "ablate": AblateConfig,
            "ceiling": CeilingConfig,
            "demo": DemoConfig,
            "backbones": ListBackbones,
            "datasets": ListDatasets,
        },
        prog="lgm",
        description="Linear Gradient Matching: distill image datasets for linear probes on frozen backbones. "
                    "lgm --version prints the version; exit status 1 for runtime errors, 2 for usage errors.",
        args=argv,
    )
    import os

    debug = os.environ.get("LGM_DEBUG") == "1"  # LGM_DEBUG=1: the traceback of every error, for bug reports
    try:
        return _run(cmd)
    except LgmError as e:
        if debug:
            raise
        print(f"lgm: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # unwritable or missing directories, a full disk: the message names the file
        if debug:
            raise
        print(f"lgm: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
