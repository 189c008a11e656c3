"""Does the frozen autoencoder reproduce the images a generator writes into?

Everything a latent generator draws inside a mask is decoded by the first stage. If that decoder shifts
colours (an under-trained autoencoder: the embedded demo's once decoded brick as green), every pair
carries the shift inside its mask while the pasted background stays exact -- a wrong pair that looks
like a right one, and a segmenter trained on it learns the colour seam. Measuring ``decode(encode(x))``
on the normal images before generating makes that failure visible: the numbers go into the pairs'
``provenance.json`` and a one-line warning is printed when they are poor.

The second failure is quieter: a decoder that reproduces texture well can still smooth thin, dark defects
away (the demo's 4-channel autoencoder kept 56 % of the real defects' contrast on texture-ad), and then
every generated defect is fainter than the real ones however good the generator. ``defect_contrast``
measures what the round trip keeps of the real defects' contrast against their own background.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from ldm.quality.contrast import GREY_LEVELS_PER_UNIT, has_contrast, mask_contrast

MIN_PSNR_DB = 20.0          # below this the decoder loses the texture itself
MAX_COLOUR_SHIFT = 10.0     # mean |Δ channel mean| in 0-255 levels: above this defects carry a colour cast
MIN_DEFECT_CONTRAST = 0.7   # share of the real defects' contrast the round trip keeps: below, defects fade


def _round_trips(model, images: Sequence[np.ndarray], batch_size: int):
    """``(x, decode(encode(x)))`` per batch of ``images`` (H×W×3 float [-1, 1]), B×3×H×W on the model's device."""
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(np.stack(images[start:start + batch_size]), dtype=np.float32))
        x = x.permute(0, 3, 1, 2).to(model.device)
        yield x, model.decode_first_stage(model.encode_to_latent(x)).clamp(-1, 1).float()


@torch.no_grad()
def round_trip(model, images: Sequence[np.ndarray], batch_size: int = 16) -> dict:
    """PSNR (dB, on [-1, 1] images) and colour shift (mean absolute difference of the per-image channel
    means, 0-255 levels) of ``decode(encode(x))`` over ``images`` (H×W×3 float [-1, 1])."""
    sq_err, shifts, n = 0.0, [], 0
    for x, rec in _round_trips(model, images, batch_size):
        sq_err += float(((rec - x) ** 2).mean(dim=(1, 2, 3)).sum())
        shifts += (rec.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().mean(dim=1).mul(GREY_LEVELS_PER_UNIT).tolist()
        n += x.shape[0]
    if n == 0:
        return {"images": 0, "psnr_db": None, "colour_shift": None}
    mse = sq_err / n
    psnr = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
    return {"images": n, "psnr_db": round(psnr, 2), "colour_shift": round(float(np.mean(shifts)), 2)}


@torch.no_grad()
def defect_contrast(model, images: Sequence[np.ndarray], masks: Sequence[np.ndarray], batch_size: int = 16) -> dict:
    """What ``decode(encode(x))`` keeps of real defects: the contrast of each defect (``mask_contrast``, 0-255
    levels) before and after the round trip, summed over ``images`` (H×W×3 float [-1, 1]) with their
    ``masks`` (H×W, > 0.5 inside), and their ratio ``kept`` (1: as strong as real, < 1: fainter)."""
    keep = [k for k, m in enumerate(masks) if has_contrast(m)]
    inside = [torch.from_numpy(np.asarray(masks[k]) > 0.5) for k in keep]
    before, after, n = 0.0, 0.0, 0
    for x, rec in _round_trips(model, [images[k] for k in keep], batch_size):
        m = torch.stack(inside[n:n + x.shape[0]]).to(x.device)
        before += float(mask_contrast(x, m).sum()) * GREY_LEVELS_PER_UNIT
        after += float(mask_contrast(rec, m).sum()) * GREY_LEVELS_PER_UNIT
        n += x.shape[0]
    if n == 0 or before <= 0:
        return {"defects": n, "contrast_real": None, "contrast_decoded": None, "kept": None}
    return {"defects": n, "contrast_real": round(before / n, 2), "contrast_decoded": round(after / n, 2),
            "kept": round(after / before, 3)}


def verdict(stats: dict, min_psnr: float = MIN_PSNR_DB, max_shift: float = MAX_COLOUR_SHIFT) -> Optional[str]:
    """A one-line warning when the ``round_trip`` on normal images is poor, else None."""
    if not stats.get("images"):
        return None
    problems = []
    if stats["psnr_db"] < min_psnr:
        problems.append(f"PSNR {stats['psnr_db']:.1f} dB < {min_psnr:g}")
    if stats["colour_shift"] > max_shift:
        problems.append(f"colour shift {stats['colour_shift']:.1f}/255 > {max_shift:g}")
    if not problems:
        return None
    return (f"the autoencoder reproduces these normal images poorly ({', '.join(problems)}; "
            f"{stats['images']} images): every generated defect is decoded through it and will carry that "
            "error next to the exact background -- train the first stage longer or use a better one")


def defect_verdict(stats: dict, min_kept: float = MIN_DEFECT_CONTRAST) -> Optional[str]:
    """A one-line warning when ``defect_contrast`` says generated defects will fade, else None."""
    if not stats.get("defects") or stats["kept"] is None or stats["kept"] >= min_kept:
        return None
    return (f"the autoencoder keeps only {stats['kept']:.0%} of the real defects' contrast "
            f"({stats['contrast_real']:.1f} -> {stats['contrast_decoded']:.1f}/255 over {stats['defects']} "
            "defect images): generated defects will be fainter than real ones -- train the first stage with a "
            "higher defect_loss_weight, longer, or with more latent channels")
