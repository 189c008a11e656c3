"""MNT -- mixed normal / anomalous training for GroundingAnomaly.

``MixedNormalAnomalyDataset`` yields the generator-side anomalies of ``AnomalyDataset`` (image, mask,
caption, name), each paired with a normal image of the same category (``normal_image``,
``normal_caption``; drawn with ``random``, which the training loader seeds per item, so the pairing is
reproducible and resumable).

The ratio is applied to each collated batch by the model (``ldm.models.diffusion.mnt``): the loader
shuffles, so no dataset-side rule could fix the share per batch.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence, Union

import numpy as np
from torch.utils.data import Dataset

from ldm.data.anomaly import AnomalyDataset, NormalImagesDataset
from utils.errors import UserError

__all__ = ["MixedNormalAnomalyDataset"]


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
