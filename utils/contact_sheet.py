"""Contact sheets: rows of image | GT mask | predicted probability | thresholded overlay, as one PNG.

Why: a metric table hides *how* a segmenter fails (misses thin scratches, fires on texture edges);
a few rows per synthesizer on the same real test images make that visible at a glance.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from utils.atomic import atomic_path
from utils.images import float_to_uint8
from utils.plots import font

# anchor colours of a dark-to-bright heat map (black → purple → red → yellow → white)
_HEAT = np.array([[0, 0, 0], [80, 18, 123], [190, 55, 82], [250, 140, 10], [252, 255, 164]], np.float64)


def heatmap(prob: np.ndarray) -> np.ndarray:
    """H×W values in [0, 1] → H×W×3 uint8 via piecewise-linear interpolation of ``_HEAT``."""
    p = np.clip(np.nan_to_num(np.asarray(prob, np.float64)), 0.0, 1.0) * (len(_HEAT) - 1)
    i = np.minimum(p.astype(int), len(_HEAT) - 2)
    t = (p - i)[..., None]
    return np.clip(_HEAT[i] * (1 - t) + _HEAT[i + 1] * t + 0.5, 0, 255).astype(np.uint8)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """H×W×3 float in [-1, 1] (project convention), H×W {0,1} mask, or uint8 → H×W×3 uint8."""
    a = np.asarray(image)
    if a.dtype != np.uint8 and a.ndim == 3:
        a = float_to_uint8(a)
    elif a.dtype != np.uint8:
        a = np.clip(a.astype(np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a[..., :3]


def overlay(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """Image with predicted pixels tinted red and (if given) the GT outline in green."""
    out = to_rgb_uint8(image).astype(np.float32)
    pm = np.asarray(pred) > 0.5
    out[pm] = out[pm] * 0.45 + np.array([255, 0, 0]) * 0.55
    if gt is not None:
        g = np.asarray(gt) > 0.5
        edge = g & ~(np.pad(g, 1)[2:, 1:-1] & np.pad(g, 1)[:-2, 1:-1] & np.pad(g, 1)[1:-1, 2:] & np.pad(g, 1)[1:-1, :-2])
        out[edge] = (0, 255, 0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _upscale(a: np.ndarray, k: int) -> np.ndarray:
    return a if k <= 1 else np.repeat(np.repeat(a, k, axis=0), k, axis=1)


def save_rows(rows: Sequence[Sequence[np.ndarray]], path: str | os.PathLike, headers: Sequence[str] = (),
              row_labels: Sequence[str] = (), title: str = "", pad: int = 4, min_panel: int = 128) -> None:
    """Tile rows of equally sized H×W×3 uint8 panels into one PNG with optional column headers.

    Small panels are enlarged by an integer factor (nearest neighbour, so pixels stay honest) until
    they are at least ``min_panel`` px tall.
    """
    rows = [[to_rgb_uint8(p) for p in r] for r in rows]
    if not rows:
        raise ValueError(f"contact sheet {path}: nothing to draw")
    k = max(1, -(-min_panel // max(p.shape[0] for r in rows for p in r)))
    rows = [[_upscale(p, k) for p in r] for r in rows]
    h = max(p.shape[0] for r in rows for p in r)
    w = max(p.shape[1] for r in rows for p in r)
    ncol = max(len(r) for r in rows)
    f = font(12)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    head = 18 if headers else 0
    ttl = 20 if title else 0
    lab_w = 0
    if row_labels:
        lab_w = 8 + max(int(measure.textlength(s, font=f)) for s in row_labels)
    width = max(lab_w + ncol * (w + pad) + pad, int(measure.textlength(title, font=font(14))) + 2 * pad)
    sheet = Image.new("RGB", (width, ttl + head + len(rows) * (h + pad) + pad), "white")
    d = ImageDraw.Draw(sheet)
    if title:
        d.text((pad, 3), title, fill="black", font=font(14))
    for c, text in enumerate(headers):
        d.text((lab_w + pad + c * (w + pad), ttl + 2), text, fill="black", font=f)
    for r, panels in enumerate(rows):
        y = ttl + head + pad + r * (h + pad)
        if r < len(row_labels):
            d.text((pad, y + h // 2 - 6), row_labels[r], fill="black", font=f)
        for c, p in enumerate(panels):
            sheet.paste(Image.fromarray(p), (lab_w + pad + c * (w + pad), y))
    with atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")


def prediction_sheet(examples: Sequence[dict], path: str | os.PathLike, threshold: float = 0.5, title: str = "") -> None:
    """``examples`` from ``ldm.segmentation.evaluate.collect_examples``: image | GT | prob | overlay rows."""
    rows = [[e["image"], e["mask"], heatmap(e["prob"]), overlay(e["image"], np.asarray(e["prob"]) > threshold, e["mask"])]
            for e in examples]
    save_rows(rows, path, headers=("image", "GT mask", "anomaly probability", f"prob > {threshold:g}, GT in green"),
              row_labels=[str(e.get("name", "")) for e in examples], title=title)
