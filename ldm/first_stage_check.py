"""Does the frozen autoencoder reproduce the images a generator writes into?

Everything a latent generator draws inside a mask is decoded by the first stage. If that decoder shifts
colours (an under-trained autoencoder: the embedded demo's once decoded brick as green), every pair
carries the shift inside its mask while the pasted background stays exact -- a wrong pair that looks
like a right one, and a segmenter trained on it learns the colour seam. Measuring ``decode(encode(x))``
on the normal images before generating makes that failure visible: the numbers go into the pairs'
``provenance.json`` and a one-line warning is printed when they are poor.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

MIN_PSNR_DB = 20.0          # below this the decoder loses the texture itself
MAX_COLOUR_SHIFT = 10.0     # mean |Δ channel mean| in 0-255 levels: above this defects carry a colour cast


@torch.no_grad()
def round_trip(model, images: Sequence[np.ndarray], batch_size: int = 16) -> dict:
    """PSNR (dB, on [-1, 1] images) and colour shift (mean absolute difference of the per-image channel
    means, 0-255 levels) of ``decode(encode(x))`` over ``images`` (H×W×3 float [-1, 1])."""
    sq_err, shifts, n = 0.0, [], 0
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(np.stack(images[start:start + batch_size]), dtype=np.float32))
        x = x.permute(0, 3, 1, 2).to(model.device)
        rec = model.decode_first_stage(model.encode_to_latent(x)).clamp(-1, 1).float()
        sq_err += float(((rec - x) ** 2).mean(dim=(1, 2, 3)).sum())
        shifts += (rec.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().mean(dim=1).mul(127.5).tolist()
        n += x.shape[0]
    if n == 0:
        return {"images": 0, "psnr_db": None, "colour_shift": None}
    mse = sq_err / n
    psnr = 10 * math.log10(4.0 / mse) if mse > 0 else math.inf
    return {"images": n, "psnr_db": round(psnr, 2), "colour_shift": round(float(np.mean(shifts)), 2)}


def verdict(stats: dict, min_psnr: float = MIN_PSNR_DB, max_shift: float = MAX_COLOUR_SHIFT) -> Optional[str]:
    """A one-line warning when the round trip is poor, else None."""
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
