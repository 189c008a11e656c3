"""MNT -- mixed normal / anomalous training for GroundingAnomaly.

``MixedNormalAnomalyDataset`` yields the generator-side anomalies of ``AnomalyDataset`` (image, mask,
caption, name), each paired with a normal image of the same category (``normal_image``,
``normal_caption``; drawn with ``random``, which the training loader seeds per item, so the pairing is
reproducible and resumable).

The ratio is applied per batch by :func:`mix_batch`: the first ``n`` rows become normal rows (the normal
image, an all-zero mask, the normal caption; the name keeps the category, so the semantic map is the
product token everywhere), with ``n`` from :func:`normal_count`. The loader shuffles, so no dataset-side
rule could fix the share per batch; mixing the collated batch makes it exact:

    n_k = floor((k + 1)·r·B + ½) − floor(k·r·B + ½)      (step k, ratio r, batch size B)

which is exactly r·B in every batch when r·B is an integer (r = 0.5, B = 8 → 4 normal rows), and
otherwise alternates so that the running share never drifts more than half an image from r.
"""
from __future__ import annotations

import math
import random
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ldm.data.anomaly import AnomalyDataset, NormalImagesDataset
from utils.errors import UserError

__all__ = ["MixedNormalAnomalyDataset", "mix_batch", "normal_count"]


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


class MixedNormalAnomalyDataset(Dataset):
    """Generator-side anomalies of one or more ``category+defect`` (``AnomalyDataset`` with ``set:
    train``), each with a random normal training image of its category.

    ``max_normals``: use only the first N normal images per category (e.g. 60, the few-shot setting);
    None: all. Other arguments as ``AnomalyDataset``; ``normal_caption_template`` fills ``{category}``.
    """

    def __init__(self, root=None, category: Union[str, Sequence[str], None] = None,
                 defect: Union[str, Sequence[str], None] = None, layout: str = "mvtec", size=256,
                 anomaly_split: str = "third", caption_template: Union[str, Sequence[str]] = "Anomaly {}",
                 normal_caption_template: Union[str, Sequence[str]] = "a photo of {category}",
                 placeholder: str = "*", repeats: int = 1, flip_p: float = 0.0,
                 layout_params: Optional[dict] = None, max_normals: Optional[int] = None,
                 empty_masks: str = "skip", cache_images: bool = True, mvtec_path=None,
                 name_template: str = "{category}+{defect}"):
        self.anomalies = AnomalyDataset(root=root, category=category, defect=defect, layout=layout, size=size,
                                        set="train", anomaly_split=anomaly_split,
                                        caption_template=caption_template, placeholder=placeholder,
                                        repeats=repeats, flip_p=flip_p, layout_params=layout_params,
                                        empty_masks=empty_masks, cache_images=cache_images,
                                        mvtec_path=mvtec_path, name_template=name_template)
        if max_normals is not None and int(max_normals) < 1:
            raise UserError(f"max_normals must be >= 1 (or null for all), got {max_normals}")
        self.normals: dict[str, NormalImagesDataset] = {}
        for cat in sorted({s.category for s in self.anomalies.samples}):
            ds = NormalImagesDataset(self.anomalies.root, categories=[cat], layout=layout, size=size,
                                     caption_template=normal_caption_template, set="train", val_count=0,
                                     flip_p=flip_p, layout_params=layout_params, placeholder=placeholder,
                                     cache_images=cache_images)
            if max_normals is not None:
                ds.entries = ds.entries[:int(max_normals)]
            self.normals[cat] = ds

    def __len__(self) -> int:
        return len(self.anomalies)

    def normal_count_of(self, category: str) -> int:
        return len(self.normals[category].entries)

    def __getitem__(self, i: int) -> dict:
        item = self.anomalies[i]
        sample = self.anomalies.samples[i % len(self.anomalies.samples)]
        normals = self.normals[sample.category]
        normal = normals[random.randrange(len(normals.entries))]
        item["normal_image"] = np.ascontiguousarray(normal["image"], dtype=np.float32)
        item["normal_caption"] = normal["caption"]
        return item
