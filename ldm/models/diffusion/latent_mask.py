"""Pixel mask → latent mask, the one rule every synthesizer uses (see ``latent_mask``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_mask(mask: torch.Tensor, size, threshold: float = 0.5, keep_nonempty: bool = True) -> torch.Tensor:
    """Pixel mask (B×H×W or B×1×H×W, {0,1}) → binary latent mask B×1×h×w.

    As the official code: bilinear resize to the latent size, then keep cells ``>= threshold``
    (bilinear 256→32 puts the edge cells of a line at exactly 0.5; ``>`` drops them, and an 8 px
    line vanishes). ``keep_nonempty``: a non-empty pixel mask never becomes an all-zero latent mask
    -- bilinear downsampling never even samples most of a 1-3 px scratch -- so the cell(s) holding
    the most mask pixels are kept. Otherwise the pair's mask would promise a defect that the sampler
    never generated.
    """
    mask = _as_b1hw(mask)
    out = (_bilinear(mask, size) >= threshold).float()
    if keep_nonempty:
        lost = _lost(out, mask)
        if bool(lost.any()):
            area = F.adaptive_avg_pool2d(mask, tuple(size))
            flat = area.flatten(1)
            top = (flat == flat.amax(1, keepdim=True)).view_as(out).float()
            out = torch.where(lost[:, None, None, None], top, out)
    return out


def rescued_latent_masks(mask: torch.Tensor, size, threshold: float = 0.5) -> int:
    """How many masks of a batch ``latent_mask`` had to keep alive (all-zero at ``threshold``)."""
    mask = _as_b1hw(mask)
    return int(_lost((_bilinear(mask, size) >= threshold).float(), mask).sum())


def _as_b1hw(mask: torch.Tensor) -> torch.Tensor:
    return (mask[:, None] if mask.ndim == 3 else mask).float()


def _bilinear(mask: torch.Tensor, size) -> torch.Tensor:
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)


def _lost(latent: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (latent.flatten(1).amax(1) == 0) & (mask.flatten(1).amax(1) > 0)
