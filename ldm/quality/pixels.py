"""Generation-quality numbers that need no segmenter, computed from a pair's pixels alone (a whole
folder's means: ``ldm.quality.folders``).

Why: a downstream score mixes synthesis quality with segmenter training noise.  These three
numbers isolate what a synthesizer does to the pixels, using the ``image-mask-ori`` strip
(generated | mask | original) that every synthesizer in this project writes:

* **background preservation** -- error outside the mask (the mask dilated by ``margin`` px is
  excluded, so a soft blend edge is not counted): mean absolute error and PSNR in [0, 1] units.
  A mask-guided synthesizer should leave the background untouched (MAE ≈ 0).
* **anomaly saliency** -- mean |generated − original| inside the mask vs. in a ``ring`` px band
  just outside it.  ``saliency = inside − ring``: large when the anomaly is visible and confined to
  the mask.  NaN for an empty mask (e.g. the normal-only baseline).
* **diversity** -- mean pairwise RMS distance between samples of the same defect type, on
  images area-downsampled to ``diversity_size``: ``diversity_image`` on the generated images and
  ``diversity_residual`` on generated − original (what the synthesizer added; independent of
  which normal image was drawn).  At most ``max_samples`` samples (evenly spaced) are used.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image
from scipy import ndimage


PSNR_CAP = 100.0
"""PSNR of identical backgrounds (MSE = 0) is reported as this many dB instead of infinity."""


def _unit(a: np.ndarray) -> np.ndarray:
    """uint8 or [-1, 1] float image → float64 in [0, 1]."""
    a = np.asarray(a)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    return (a.astype(np.float64) + 1.0) / 2.0


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return mask
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return ndimage.binary_dilation(mask, structure=(yy ** 2 + xx ** 2) <= r * r)


def background_preservation(generated, original, mask, margin: int = 2) -> dict:
    """``{"bg_mae", "bg_psnr"}`` outside ``dilate(mask, margin)``; NaN if nothing is outside."""
    g, o = _unit(generated), _unit(original)
    outside = ~_dilate(np.asarray(mask) > 0.5, margin)
    if not outside.any():
        return {"bg_mae": math.nan, "bg_psnr": math.nan}
    diff = g[outside] - o[outside]
    mse = float(np.mean(diff ** 2))
    psnr = PSNR_CAP if mse == 0 else min(PSNR_CAP, 10.0 * math.log10(1.0 / mse))
    return {"bg_mae": float(np.mean(np.abs(diff))), "bg_psnr": psnr}


def anomaly_saliency(generated, original, mask, ring: int = 8) -> dict:
    """``{"inside_diff", "ring_diff", "saliency"}`` (mean abs differences in [0, 1] units)."""
    g, o = _unit(generated), _unit(original)
    m = np.asarray(mask) > 0.5
    band = _dilate(m, ring) & ~m
    d = np.abs(g - o).mean(axis=-1) if g.ndim == 3 else np.abs(g - o)
    inside = float(d[m].mean()) if m.any() else math.nan
    around = float(d[band].mean()) if band.any() else math.nan
    return {"inside_diff": inside, "ring_diff": around, "saliency": inside - around}


def area_downsample(a: np.ndarray, size: int) -> np.ndarray:
    """The image (uint8 or [-1, 1] float) area-averaged to size×size, float64 in [0, 1] (for diversity)."""
    im = Image.fromarray(np.clip(_unit(a) * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(im.resize((size, size), Image.BOX), np.float64) / 255.0


def mean_pairwise_rms(arrays) -> float:
    """Mean over pairs i < j of sqrt(mean((a_i − a_j)²)); NaN with fewer than two arrays."""
    x = np.stack([np.asarray(a, np.float64).ravel() for a in arrays]) if len(arrays) else np.zeros((0, 0))
    n = x.shape[0]
    if n < 2:
        return math.nan
    sq = (x ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0) / x.shape[1]
    iu = np.triu_indices(n, 1)
    return float(np.sqrt(d2[iu]).mean())


def split_strip(strip: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image-mask-ori`` strip (H × 3W × 3) → (generated, mask bool, original)."""
    h, w3 = strip.shape[:2]
    if w3 % 3:
        raise ValueError(f"image-mask-ori strip width {w3} is not a multiple of 3")
    w = w3 // 3
    return strip[:, :w], strip[:, w:2 * w].mean(axis=-1) > 127.5, strip[:, 2 * w:]
