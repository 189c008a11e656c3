"""MNT -- mixed normal / anomalous training of GroundingAnomaly, applied to each collated batch.

The batches come from ``ldm.data.mixed.MixedNormalAnomalyDataset`` (each anomaly with a paired normal
image and caption). :func:`mix_batch` turns the first ``n`` rows into normal rows (the normal image, an
all-zero mask, the normal caption; the name keeps the category, so the semantic map is the product token
everywhere), with ``n`` from :func:`normal_count`:

    n_k = floor((k + 1)·r·B + ½) − floor(k·r·B + ½)      (step k, ratio r, batch size B)

which is exactly r·B in every batch when r·B is an integer (r = 0.5, B = 8 → 4 normal rows), and
otherwise alternates so that the running share never drifts more than half an image from r.
"""
from __future__ import annotations

import math

import torch

from utils.errors import UserError


def normal_count(batch_size: int, ratio: float, step: int = 0) -> int:
    """How many rows of the batch at optimizer step ``step`` are normal (see the module notes)."""
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise UserError(f"mnt_ratio must lie in [0, 1], got {ratio}")
    b, k = int(batch_size), int(step)
    return int(math.floor((k + 1) * ratio * b + 0.5) - math.floor(k * ratio * b + 0.5))


def mix_batch(batch: dict, n_normal: int, image_key: str = "image", mask_key: str = "mask",
              caption_key: str = "caption", normal_key: str = "normal_image",
              normal_caption_key: str = "normal_caption") -> dict:
    """A new batch whose first ``n_normal`` rows are the paired normal images with empty masks and the
    normal captions; adds ``is_normal`` (bool, B). The input batch is not modified."""
    images = batch[image_key]
    b = int(images.shape[0])
    n = int(n_normal)
    if not 0 <= n <= b:
        raise ValueError(f"n_normal must lie in [0, {b}], got {n}")
    out = dict(batch)
    is_normal = torch.zeros(b, dtype=torch.bool)
    is_normal[:n] = True
    out["is_normal"] = is_normal
    if n == 0:
        return out
    if normal_key not in batch:
        raise UserError(f"mixed normal/anomalous training needs batches with '{normal_key}' (data target "
                        "ldm.data.mixed.MixedNormalAnomalyDataset); set model.params.mnt_ratio=0 to train on "
                        "anomalies only")
    normals = batch[normal_key]
    if tuple(normals.shape) != tuple(images.shape):
        raise ValueError(f"{normal_key} has shape {tuple(normals.shape)}, {image_key} {tuple(images.shape)}")
    images = images.clone()
    images[:n] = normals[:n].to(images)
    masks = batch[mask_key].clone()
    masks[:n] = 0
    out[image_key], out[mask_key] = images, masks
    if normal_caption_key in batch:
        captions = list(batch[caption_key])
        captions[:n] = list(batch[normal_caption_key])[:n]
        out[caption_key] = captions
    return out
