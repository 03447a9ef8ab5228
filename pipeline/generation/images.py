"""Sample grids as PNG, for looking at results (small images are upscaled with nearest neighbour)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.artifacts import atomic_path


def grid(images: np.ndarray, rows: int, min_cell: int = 32, pad: int = 1) -> np.ndarray:
    """Tile uint8 NHWC images into rows x rows cells (fewer if there are fewer images)."""
    n = min(len(images), rows * rows)
    cols = min(rows, n)
    lines = -(-n // cols)
    h, w, c = images.shape[1:]
    zoom = max(1, -(-min_cell // h))
    cell_h, cell_w = h * zoom + pad, w * zoom + pad
    canvas = np.full((lines * cell_h + pad, cols * cell_w + pad, c), 255, np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        big = images[i].repeat(zoom, axis=0).repeat(zoom, axis=1)
        canvas[pad + r * cell_h : pad + r * cell_h + h * zoom, pad + col * cell_w : pad + col * cell_w + w * zoom] = big
    return canvas


def save_grid(path: str | Path, images: np.ndarray, rows: int) -> None:
    canvas = grid(images, rows)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas.squeeze(-1) if canvas.shape[-1] == 1 else canvas).save(tmp, format="PNG")
