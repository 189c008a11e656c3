"""The one rule for resizing binary masks: pixel masks to the working size, pixel masks to latent masks.

Every place that changes a mask's resolution calls ``resize_binary_masks``: loading training and
test masks (``ldm.data.io.resize_mask``), the generator's inputs, the evaluation's ground truth and
the pixel → latent step of every synthesizer (``ldm.models.diffusion.latent_mask``). One rule means a
crack that is continuous in the mask the segmenter is scored against is continuous in the mask the
generator was trained and sampled with.

Shrinking by a factor ``k = H/h`` (per axis) works on area, not on point samples:

    coverage(c) = |mask ∩ c| / |c|                  for each output cell c
    thick       = mask ∘ S                          opening by a (2k-1)×(2k-1) square S
    thin        = mask \\ thick                     parts narrower than about two output cells
    out(c)      = coverage(c) >= threshold  or  |thin ∩ c| / |c| >= 1 / (2k)

The first term is the area rule: unbiased for wide regions (a region aligned with the grid comes
out exactly). The second keeps thin structures: a line one source pixel wide that crosses half a
cell (k/2 pixels) switches the cell on, so a 1-3 px crack at 256 → 64 → 16 stays one 8-connected
chain of cells instead of the isolated dots that bilinear sampling plus ``>= 0.5`` leaves (bilinear
never reads most pixels of such a line). Any wide region contains a whole (2k-1)² square, hence a
whole cell: it always keeps its cells through the first term, and the second touches only its
ragged edge (a curved boundary's slivers where no square fits), by at most one cell. A mask that is
not empty never comes out empty: where both terms miss (a speck of a few pixels), the cell holding
most of the mask is kept.

Enlarging takes each new pixel from the old pixel its centre falls in (``nearest-exact``): a whole
factor repeats every pixel, so nothing thins out or rounds off.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def resize_binary_masks(mask: torch.Tensor, size: Sequence[int], threshold: float = 0.5) -> torch.Tensor:
    """B×1×H×W {0,1} masks → B×1×h×w float {0,1} by the module's rule (``size`` = (h, w))."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected B×1×H×W masks, got shape {tuple(mask.shape)}")
    h, w = int(size[0]), int(size[1])
    m = (mask > 0.5).float()
    H, W = m.shape[-2:]
    if (h, w) == (H, W):
        return m
    if h > H or w > W:
        m = _enlarge(m, (max(h, H), max(w, W)))
        if (h, w) == tuple(m.shape[-2:]):
            return m
    return _shrink(m, (h, w), threshold)


def thin_mask_count(mask: torch.Tensor, size: Sequence[int], threshold: float = 0.5) -> int:
    """How many masks of a batch the area rule alone would have broken or lost: their result has
    cells that only the thin-structure term (or the never-empty fallback) switched on."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"expected B×1×H×W masks, got shape {tuple(mask.shape)}")
    m = (mask > 0.5).float()
    if tuple(m.shape[-2:]) == (int(size[0]), int(size[1])):
        return 0
    area_only = (F.adaptive_avg_pool2d(m, tuple(size)) >= threshold).float()
    full = resize_binary_masks(m, size, threshold)
    return int((full > area_only).flatten(1).any(1).sum())


def _enlarge(m: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(m, size=tuple(size), mode="nearest-exact")


def _shrink(m: torch.Tensor, size, threshold: float) -> torch.Tensor:
    H, W = m.shape[-2:]
    kh, kw = H / size[0], W / size[1]
    coverage = F.adaptive_avg_pool2d(m, tuple(size))
    thin = m * (1.0 - _opening(m, 2 * math.ceil(kh) - 1, 2 * math.ceil(kw) - 1))
    thin_share = F.adaptive_avg_pool2d(thin, tuple(size))
    out = ((coverage >= threshold) | (thin_share >= 0.5 / max(kh, kw) - 1e-6)).float()
    lost = (out.flatten(1).amax(1) == 0) & (m.flatten(1).amax(1) > 0)
    if bool(lost.any()):
        flat = coverage.flatten(1)
        top = (flat == flat.amax(1, keepdim=True)).view_as(out).float()
        out = torch.where(lost[:, None, None, None], top, out)
    return out


def _opening(m: torch.Tensor, sh: int, sw: int) -> torch.Tensor:
    """Morphological opening by an sh×sw square: the union of all such squares inside the mask.

    The image is extended by replicating its border, so a region running off the image is as
    wide as it looks at the border."""
    if sh <= 1 and sw <= 1:
        return m
    padded = F.pad(m, (sw - 1, sw - 1, sh - 1, sh - 1), mode="replicate")
    fits = -F.max_pool2d(-padded, (sh, sw), stride=1)   # 1 where the square anchored there fits
    return F.max_pool2d(fits, (sh, sw), stride=1)
