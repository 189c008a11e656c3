"""Defect contrast: how strongly a defect stands out from its own image, in 0-255 grey levels.

    contrast(I, M) = mean over channels c of | mean_{p ∈ M} I_c(p) − mean_{p ∉ M} I_c(p) |

One number per (image, mask), the same for a real defect and a generated one, so the two can be
compared directly: a generator whose crack pairs reach a small fraction of the real cracks' contrast
draws defects a segmenter hardly sees, whatever its IoU table says. The first-stage check
(``ldm.first_stage_check.defect_contrast``) uses the same measure to tell what the autoencoder's round
trip keeps of real defects. Masks that are empty or cover the whole image have no contrast and are
skipped.

Contrast has no sign and no hue: a grey patch on red brick has as much of it as a dark crack. The
signed colour shift keeps both,

    shift(I, M)_c = mean_{p ∈ M} I_c(p) − mean_{p ∉ M} I_c(p)        (one 3-vector per image),

and the agreement of generated defects with real ones of the type is the generated mean shift projected
on the real mean shift, as a share of it:

    agreement = <s̄_gen, s̄_real> / |s̄_real|²

1: the same change of colour as the real defects; 0: a change in another colour direction (a crack
drawn as a grey-green patch on brick where real cracks darken every channel); < 0: the opposite change.
"""
from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch

GREY_LEVELS_PER_UNIT = 127.5    # one unit of a [-1, 1] image in 0-255 grey levels
CONTRAST_FLOOR = 0.5            # generated defects should reach at least half of the real defects' contrast
CONTRAST_CEILING = 1.5          # ... and not much more: a defect far stronger than real ones is another defect


def mask_shift(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Per image, in the units of ``x``: B×3×H×W images, B×H×W bool masks → B×3 signed shifts (module formula)."""
    m = inside[:, None].to(x.dtype)
    mean_in = (x * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1)
    mean_out = (x * (1 - m)).sum(dim=(2, 3)) / (1 - m).sum(dim=(2, 3)).clamp(min=1)
    return mean_in - mean_out


def mask_contrast(x: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """Per image, in the units of ``x``: B×3×H×W images, B×H×W bool masks → B contrasts (module formula)."""
    return mask_shift(x, inside).abs().mean(dim=1)


def has_contrast(mask: np.ndarray) -> bool:
    """A mask whose contrast is defined: neither empty nor the whole image."""
    inside = np.asarray(mask) > 0.5
    return bool(inside.any()) and not bool(inside.all())


def image_shift(image: np.ndarray, mask: np.ndarray) -> Optional[np.ndarray]:
    """The signed colour shift (3 channels, 0-255 levels) of one uint8 H×W×3 image inside ``mask`` (H×W,
    > 0.5 inside), or None when the mask has none (``has_contrast``)."""
    if not has_contrast(mask):
        return None
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    return mask_shift(x, torch.from_numpy(np.asarray(mask) > 0.5)[None])[0].numpy().astype(np.float64)


def image_contrast(image: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """The contrast of one uint8 H×W×3 image (0-255 levels) inside ``mask``, or None when it has none."""
    shift = image_shift(image, mask)
    return None if shift is None else float(np.abs(shift).mean())


def mean_contrast(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> dict:
    """``{"n", "contrast", "shift"}`` over the (uint8 image, mask) pairs that have a contrast: the mean
    contrast and the mean signed colour shift (per channel), in 0-255 levels."""
    shifts = [s for s in (image_shift(img, m) for img, m in pairs) if s is not None]
    if not shifts:
        return {"n": 0, "contrast": None, "shift": None}
    return {"n": len(shifts), "contrast": round(float(np.mean([np.abs(s).mean() for s in shifts])), 2),
            "shift": [round(float(v), 2) for v in np.mean(shifts, axis=0)]}


def pairs_contrast(folder) -> dict:
    """``mean_contrast`` of the complete pairs of one ``<category>/<defect>`` pairs folder (``ldm.pairs``):
    each generated image against its own mask."""
    from ldm.data.io import load_image_uint8, load_mask
    from ldm.pairs import read_pairs_folder

    found = read_pairs_folder(folder)
    return mean_contrast((load_image_uint8(p.image), load_mask(p.mask)) for p in found.pairs)


def real_contrast(samples: Iterable, size) -> dict:
    """``mean_contrast`` of real anomalies (``ldm.data.layouts.AnomalySample``: ``image``, ``mask``), both
    brought to the working ``size`` the way training and evaluation load them."""
    from ldm.data.io import load_image_uint8, load_mask

    return mean_contrast((load_image_uint8(s.image, size), load_mask(s.mask, size)) for s in samples)


def shift_agreement(generated: dict, real: dict) -> Optional[float]:
    """How much of the real defects' colour change the generated ones make (module formula: the mean
    generated shift projected on the mean real one, as a share of it); None when either is unknown or the
    real defects change nothing."""
    g, r = generated.get("shift"), real.get("shift")
    if g is None or r is None:
        return None
    g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
    norm2 = float(r @ r)
    return round(float(g @ r) / norm2, 3) if norm2 > 0 else None


def contrast_ratio(generated: dict, real: dict) -> Optional[float]:
    """Generated contrast as a share of the real one (1: as strong; None when either is unknown)."""
    if not generated.get("contrast") or not real.get("contrast"):
        return None
    return round(generated["contrast"] / real["contrast"], 3)
