"""The picture of a synthetic set: one cell per image with its class name."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont


def save_grid(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], path: Path,
              columns: int = 10, cell: int = 128) -> None:
    """A PNG grid of ``images`` (N x C x H x W in [0, 1]) captioned by class name."""
    canvas = grid_image(images, labels, class_names, columns, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def to_uint8_hwc(images: torch.Tensor):
    """N x H x W x 3 uint8 numpy pixels of N x C x H x W images in [0, 1] (grey replicated)."""
    x = images.detach().float().clamp(0, 1).cpu()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid_image(images: torch.Tensor, labels: torch.Tensor, class_names: list[str], columns: int = 10,
               cell: int = 128, title: str | None = None) -> Image.Image:
    """The grid as a PIL image (``title``: an optional line above it, e.g. the step of a snapshot)."""
    n = images.shape[0]
    columns = max(1, min(columns, n))
    rows = (n + columns - 1) // columns
    caption = 14
    top = 16 if title else 0
    canvas = Image.new("RGB", (columns * cell, top + rows * (cell + caption)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if title:
        draw.text((2, 2), title, fill="black", font=font)
    pixels = to_uint8_hwc(images)
    for i in range(n):
        r, c = divmod(i, columns)
        small = pixels.shape[1] < cell
        tile = Image.fromarray(pixels[i]).resize((cell, cell), Image.NEAREST if small else Image.BILINEAR)
        canvas.paste(tile, (c * cell, top + r * (cell + caption)))
        name = class_names[int(labels[i])]
        while len(name) > 3 and draw.textlength(name, font=font) > cell - 4:
            name = name[:-2] + "…"
        draw.text((c * cell + 2, top + r * (cell + caption) + cell + 1), name, fill="black", font=font)
    return canvas
