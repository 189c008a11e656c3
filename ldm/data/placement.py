"""Where a defect may go: on the object, never on the background, and — at native resolution —
inside a window of the full-size image.

Object categories (a bottle on a black table, a pill on a tray) need a foreground mask per normal
image: a defect mask drawn at random can land on the background, and a segmenter trained on such a
pair learns that background texture is a defect. ``ForegroundPlacement`` accepts a mask when at least
``min_share`` of it lies on the foreground; otherwise it moves it (random shift, flip or 90° turn
that brings it onto the foreground) or asks for another mask. Textures skip all of this.

The foreground comes from ``--fg_dir`` (a mask per normal image, same file name) or from Otsu's
threshold on the grey image, taking as foreground the class that touches the image border least,
then keeping its largest connected component with holes filled.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from utils.errors import InputNotFound, UserError
from utils.images import float_to_uint8

# MVTec-AD's object categories (the other five are textures); VisA and BTAD products are objects too
MVTEC_OBJECTS = ("bottle", "cable", "capsule", "hazelnut", "metal_nut", "pill", "screw", "toothbrush", "transistor",
                 "zipper")
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
TEXTURE_AD = ("brick", "grass", "gravel")


def is_object_category(layout: str, category: str) -> bool:
    """Whether defects must stay on a foreground object (``--foreground auto``)."""
    layout = str(layout).lower()
    if layout in ("texture_ad", "texture-ad") or category in TEXTURE_AD or category in MVTEC_TEXTURES:
        return False
    if layout in ("mvtec", "mvtec_ad"):
        return category in MVTEC_OBJECTS
    return layout in ("visa", "btad")


def otsu_threshold(gray: np.ndarray) -> float:
    """Otsu's threshold of a uint8 image (maximises the between-class variance)."""
    hist = np.bincount(np.asarray(gray, np.uint8).ravel(), minlength=256).astype(np.float64)
    p = hist / max(hist.sum(), 1.0)
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1.0 - omega), 1e-12)
    return float(np.argmax(between))


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Foreground (H×W bool) of an RGB image in [-1, 1] or uint8, by Otsu + border rule."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = float_to_uint8(a)
    gray = a.mean(axis=2) if a.ndim == 3 else a.astype(np.float64)
    bright = gray > otsu_threshold(gray.astype(np.uint8))
    border = np.concatenate([bright[0], bright[-1], bright[:, 0], bright[:, -1]])
    fg = bright if border.mean() < 0.5 else ~bright
    labels, n = ndimage.label(fg)
    if n == 0:
        return np.ones_like(fg)  # a flat image: no object to protect
    sizes = ndimage.sum(fg, labels, index=np.arange(1, n + 1))
    largest = labels == (1 + int(np.argmax(sizes)))
    return ndimage.binary_fill_holes(largest)


def share_on(mask: np.ndarray, fg: np.ndarray) -> float:
    m = np.asarray(mask) > 0.5
    return float((m & fg).sum()) / max(int(m.sum()), 1)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


class ForegroundPlacement:
    """Keep masks on the object. ``place(mask, image, path, rng)`` → ``(mask, status)`` with status
    ``kept`` (already on it), ``moved`` or ``rejected`` (the caller draws another mask)."""

    def __init__(self, min_share: float = 0.9, fg_dir: Optional[str] = None, tries: int = 64):
        if not 0.0 < float(min_share) <= 1.0:
            raise UserError(f"--fg_min_share must lie in (0, 1], got {min_share}")
        self.min_share = float(min_share)
        self.fg_dir = Path(fg_dir) if fg_dir else None
        if self.fg_dir is not None and not self.fg_dir.is_dir():
            raise InputNotFound(f"--fg_dir not found: {self.fg_dir}")
        self.tries = int(tries)

    def foreground(self, image: np.ndarray, path) -> np.ndarray:
        if self.fg_dir is None:
            return foreground_mask(image)
        from ldm.data.io import load_mask

        name = Path(path).name
        cands = [self.fg_dir / name, self.fg_dir / (Path(name).stem + ".png")]
        found = next((c for c in cands if c.is_file()), None)
        if found is None:
            raise InputNotFound(f"--fg_dir {self.fg_dir}: no foreground mask for {name}")
        return load_mask(found, image.shape[:2]) > 0.5

    def place(self, mask: np.ndarray, image: np.ndarray, path, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        fg = self.foreground(image, path)
        m = np.asarray(mask) > 0.5
        if share_on(m, fg) >= self.min_share:
            return mask, "kept"
        h, w = m.shape
        ys, xs = np.nonzero(m)
        fy, fx = np.nonzero(fg)
        if len(fy) == 0:
            return mask, "rejected"
        for _ in range(self.tries):
            cand = m
            k = int(rng.integers(4))
            if k and cand.shape[0] == cand.shape[1]:
                cand = np.rot90(cand, k)
            if rng.random() < 0.5:
                cand = cand[:, ::-1]
            cy, cx = np.nonzero(cand)
            i = int(rng.integers(len(fy)))  # put the mask's centre on a random foreground pixel
            dy = int(fy[i] - round(cy.mean()))
            dx = int(fx[i] - round(cx.mean()))
            moved = _shift(np.ascontiguousarray(cand), dy, dx)
            if moved.sum() == m.sum() and share_on(moved, fg) >= self.min_share:
                return moved.astype(np.float32), "moved"
        return mask, "rejected"


# ------------------------------------------------------------------------------------- native windows
def window_around(mask: np.ndarray, min_side: int, margin: float = 0.5) -> tuple[int, int, int, int]:
    """A square window ``(top, left, height, width)`` of the full image around the mask's bounding
    box: side = max(box side × (1 + margin), ``min_side``), clipped to the image (non-square only
    when the image itself is narrower than the box)."""
    m = np.asarray(mask) > 0.5
    H, W = m.shape
    ys, xs = np.nonzero(m)
    if len(ys) == 0:
        raise UserError("native window: the mask is empty")
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(max(max(y1 - y0, x1 - x0) * (1.0 + margin), min_side))
    h, w = min(side, H), min(side, W)
    cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
    top = int(np.clip(round(cy - h / 2.0), 0, H - h))
    left = int(np.clip(round(cx - w / 2.0), 0, W - w))
    return top, left, h, w
