"""Distilled images as files: one PNG per image named by class, the grid, and a timelapse GIF of the snapshots."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from lgm.errors import LgmError


def safe_name(text: str) -> str:
    """A file-name-safe version of a class name (letters, digits, '-', '_' and '.')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "class"


def export_pngs(run: str | Path, out: str | Path) -> list[Path]:
    """``<out>/<NNN>_<class>.png`` for every distilled image at its stored resolution, plus ``<out>/grid.png``."""
    from PIL import Image

    from lgm.artifacts import DistilledSet
    from lgm.grid import save_grid, to_uint8_hwc

    art = DistilledSet.load(run)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8_hwc(art.images)
    width = max(3, len(str(len(pixels) - 1)))
    paths = []
    for i, pix in enumerate(pixels):
        path = out / f"{i:0{width}d}_{safe_name(art.class_names[int(art.labels[i])])}.png"
        Image.fromarray(pix).save(path)
        paths.append(path)
    save_grid(art.images, art.labels, art.class_names, out / "grid.png")
    return paths + [out / "grid.png"]


def export_timelapse(run: str | Path, out: str | Path, frame_ms: int = 200, cell: int = 96,
                     columns: int = 10) -> Path:
    """An animated GIF of the run's snapshots (``snapshot_every``), one grid per snapshot, step in the title."""
    from lgm.artifacts import read_json_object
    from lgm.grid import grid_image
    from lgm.rundir import read_snapshots

    run = Path(run)
    snaps = read_snapshots(run)
    if not snaps:
        raise LgmError(f"{run} holds no snapshots ({run / 'snapshots'}); distill with --snapshot-every K "
                       "(re-running the same command with it resumes and adds snapshots from there)")
    meta_path = run / "distilled.json"
    config_path = run / "config.json"
    names = labels = None
    if meta_path.is_file():
        names = read_json_object(meta_path, "an artifact description").get("class_names")
    ipc = read_json_object(config_path, "a run configuration").get("ipc", 1) if config_path.is_file() else 1
    if not isinstance(ipc, int) or ipc <= 0:
        raise LgmError(f"{config_path}: ipc must be a positive integer, got {ipc!r}")
    n = snaps[0][1].shape[0]
    if names is None:
        names = [f"class {c}" for c in range(max(1, n // ipc))]
    labels = torch.arange(len(names)).repeat_interleave(ipc)[:n]
    frames = [grid_image(x.float() / 255, labels, names, columns, cell, title=f"step {step}")
              for step, x in snaps]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = [f.convert("P", palette=1, colors=255) for f in frames]  # 1 = Image.Palette.ADAPTIVE
    frames[0].save(out, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0, optimize=False)
    return out
