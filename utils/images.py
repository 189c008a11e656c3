"""Image grids and PNG writing with PIL only (torchvision has no CPU build here)."""
from __future__ import annotations

import math
import os

import numpy as np
import torch
from PIL import Image

from utils.atomic import atomic_path


def float_to_uint8(a) -> np.ndarray:
    """An image in [-1, 1] (any shape) as the uint8 a PNG holds: round((a + 1)·127.5), clipped to 0..255,
    computed in float32. The project's one float → uint8 rule (``uint8_to_float`` is its inverse)."""
    return np.clip((np.asarray(a, np.float32) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def uint8_to_float(a):
    """uint8 pixels as float32 in [-1, 1]: a / 127.5 − 1 (the CompVis convention). A torch tensor stays
    a tensor on its device (the input range of LPIPS and Inception); anything else becomes an array."""
    if isinstance(a, torch.Tensor):
        return a.float() / 127.5 - 1.0
    return np.asarray(a).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """B×C×H×W float tensor in ``value_range`` → B×H×W×C uint8 (C = 1 or 3; 1 is kept as grey)."""
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"expected B×C×H×W images, got shape {tuple(images.shape)}")
    lo, hi = value_range
    x = images.detach().float().cpu().clamp(lo, hi)
    x = (x - lo) / (hi - lo)
    x = (x * 255.0).round().to(torch.uint8)
    if x.shape[1] not in (1, 3):
        x = x[:, :3] if x.shape[1] > 3 else x[:, :1]
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2,
              value_range: tuple[float, float] = (-1.0, 1.0), pad_value: int = 0) -> np.ndarray:
    """Tile a batch into one H×W×3 uint8 array, ``nrow`` images per row (default: square-ish)."""
    arr = to_uint8(images, value_range)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    b, h, w, c = arr.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(b))))
    ncol = int(math.ceil(b / nrow))
    grid = np.full((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), pad_value, np.uint8)
    for i in range(b):
        r, q = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        grid[y:y + h, x:x + w] = arr[i]
    return grid


def save_png(array: np.ndarray | Image.Image, path: str | os.PathLike) -> None:
    """Write a PNG atomically (temp file + rename), so a kill never leaves a truncated image."""
    img = array if isinstance(array, Image.Image) else Image.fromarray(np.asarray(array))
    with atomic_path(path, suffix=".png") as tmp:
        img.save(tmp, format="PNG")


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int | None = None,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> None:
    save_png(make_grid(images, nrow=nrow, value_range=value_range), path)
