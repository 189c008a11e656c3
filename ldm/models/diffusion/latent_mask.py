"""Pixel mask → latent mask, the one rule every synthesizer uses (see ``latent_mask``)."""
from __future__ import annotations

import torch

from utils.mask_resize import resize_binary_masks, thin_mask_count


def latent_mask(mask: torch.Tensor, size, threshold: float = 0.5) -> torch.Tensor:
    """Pixel mask (B×H×W or B×1×H×W, {0,1}) → binary latent mask B×1×h×w.

    ``utils.mask_resize``'s rule, the same one that sized the pixel mask: a latent cell is on when
    the mask covers ``>= threshold`` of it, or when a structure narrower than about two cells
    crosses half of it, so a 1-3 px crack stays one continuous chain of cells, and a non-empty mask
    never yields an empty latent mask (the pair's mask would promise a defect the sampler never
    generated). This deviates from the official code (bilinear resize, ``>= 0.5``), which never even
    samples most pixels of a thin scratch: see docs/method.md.
    """
    return resize_binary_masks(_as_b1hw(mask), size, threshold)


def thin_latent_masks(mask: torch.Tensor, size, threshold: float = 0.5) -> int:
    """How many masks of a batch have parts only the thin-structure rule kept (the area rule alone
    would have broken them into dots or lost them)."""
    return thin_mask_count(_as_b1hw(mask), size, threshold)


def _as_b1hw(mask: torch.Tensor) -> torch.Tensor:
    return (mask[:, None] if mask.ndim == 3 else mask).float()
