"""Inputs for anomaly generation: a normal image paired with a mask from a ``MaskSource``.

Item n is a pure function of ``(seed, n)`` (and the mask source's own seed): the normal image is
picked by ``np.random.default_rng([seed, n])`` and the mask is ``mask_source.draw(n)``, so a
generation run can be split across processes or resumed at any n and still produce the same pairs.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
from torch.utils.data import Dataset

from ldm.data.io import list_image_files, load_image, parse_size, resize_mask
from ldm.data.layouts import index_category
from ldm.data.masks import MaskSource
from utils.errors import InputNotFound, UserError

__all__ = ["GenerationInputs", "normal_images_for"]


def normal_images_for(layout: str, root, category: str, **layout_params: Any) -> list[Path]:
    """The category's normal training images (``train/good``, BTAD ``train/ok``, VisA train normals)."""
    return list(index_category(layout, root, category, **layout_params).train_good)


class GenerationInputs(Dataset):
    """``normal_images``: a folder or a list of files. ``mask_source``: a ``MaskSource`` or its config
    node (``target``/``params``; it gets this seed unless it sets its own). ``length``: how many
    pairs (FAST writes 500 per run)."""

    def __init__(self, normal_images: Union[str, os.PathLike, Sequence], mask_source: Union[MaskSource, Mapping],
                 size=256, seed: int = 0, length: int = 500):
        if isinstance(normal_images, (str, os.PathLike)):
            folder = Path(normal_images)
            self.normal_images = list_image_files(folder)
            if not self.normal_images:
                raise UserError(f"empty split: no normal images in {folder}")
        else:
            self.normal_images = [Path(p) for p in normal_images]
            if not self.normal_images:
                raise UserError("empty split: GenerationInputs got an empty list of normal images")
            for p in self.normal_images:
                if not p.is_file():
                    raise InputNotFound(f"normal image not found: {p}")
        if isinstance(mask_source, Mapping):
            from ldm.util import instantiate_from_config
            cfg = dict(mask_source)
            params = dict(cfg.get("params") or {})
            params.setdefault("seed", seed)
            params.setdefault("size", size)
            cfg["params"] = params
            mask_source = instantiate_from_config(cfg)
        if not callable(getattr(mask_source, "draw", None)):
            raise TypeError(f"mask_source must have draw(index), got {type(mask_source).__name__}")
        self.mask_source = mask_source
        self.size = parse_size(size)
        self.seed = int(seed)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def normal_path(self, n: int) -> Path:
        """The normal image of pair n (without decoding it)."""
        if not 0 <= n < self.length:
            raise IndexError(f"generation index {n} out of range [0, {self.length})")
        rng = np.random.default_rng([self.seed, int(n)])
        return self.normal_images[int(rng.integers(len(self.normal_images)))]

    def __getitem__(self, n: int) -> dict:
        path = self.normal_path(n)
        image = load_image(path, self.size)
        if hasattr(self.mask_source, "draw_with_info"):
            mask, origin = self.mask_source.draw_with_info(n)
        else:
            mask, origin = self.mask_source.draw(n), type(self.mask_source).__name__
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != image.shape[:2]:
            mask = resize_mask(mask, image.shape[:2])
        return {"image": image, "mask": mask, "normal_path": str(path), "mask_origin": origin, "index": int(n)}
