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

__all__ = ["ExplicitPairs", "GenerationInputs", "normal_images_for"]


def normal_images_for(layout: str, root, category: str, **layout_params: Any) -> list[Path]:
    """The category's normal training images (``train/good``, BTAD ``train/ok``, VisA train normals)."""
    return list(index_category(layout, root, category, **layout_params).train_good)


class GenerationInputs(Dataset):
    """``normal_images``: a folder or a list of files. ``mask_source``: a ``MaskSource`` or its config
    node (``target``/``params``; it gets this seed unless it sets its own). ``length``: how many
    pairs (FAST writes 500 per run). ``placement``: a ``ForegroundPlacement`` that keeps masks on the
    object (moving or redrawing them). ``native``: images at their file's size, masks resized to it
    (the generator then works in a window around the mask)."""

    max_redraws = 20

    def __init__(self, normal_images: Union[str, os.PathLike, Sequence], mask_source: Union[MaskSource, Mapping],
                 size=256, seed: int = 0, length: int = 500, placement=None, native: bool = False):
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
        self.placement = placement
        self.native = bool(native)
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def normal_path(self, n: int) -> Path:
        """The normal image of pair n (without decoding it)."""
        if not 0 <= n < self.length:
            raise IndexError(f"generation index {n} out of range [0, {self.length})")
        rng = np.random.default_rng([self.seed, int(n)])
        return self.normal_images[int(rng.integers(len(self.normal_images)))]

    def _draw(self, index: int, shape) -> tuple[np.ndarray, str]:
        if hasattr(self.mask_source, "draw_with_info"):
            mask, origin = self.mask_source.draw_with_info(index)
        else:
            mask, origin = self.mask_source.draw(index), type(self.mask_source).__name__
        mask = np.asarray(mask, dtype=np.float32)
        if mask.shape != tuple(shape):
            mask = resize_mask(mask, shape)
        return mask, origin

    def __getitem__(self, n: int) -> dict:
        path = self.normal_path(n)
        image = load_image(path, None if self.native else self.size)
        mask, origin = self._draw(n, image.shape[:2])
        placed = "off"
        if self.placement is not None:
            for k in range(self.max_redraws):
                if k:  # another mask, from an index range no other pair uses
                    mask, origin = self._draw(self.length + n * self.max_redraws + k, image.shape[:2])
                rng = np.random.default_rng([self.seed, 2000, int(n), k])
                mask, placed = self.placement.place(mask, image, path, rng)
                if placed != "rejected":
                    placed = placed if k == 0 else f"redrawn ({placed})"
                    break
            else:
                raise UserError(f"no mask stays on the foreground of {path} after {self.max_redraws} draws "
                                f"(--fg_min_share {self.placement.min_share}); lower it or pass --fg_dir")
        return {"image": image, "mask": mask, "normal_path": str(path), "mask_origin": origin, "index": int(n),
                "placement": placed}


class ExplicitPairs(Dataset):
    """Pairs chosen by the user: a CSV with columns ``normal_image``, ``mask`` and optionally ``defect``
    (rows of other defect types are skipped). Item n is row n of the kept rows; paths are relative to
    the CSV's folder unless absolute."""

    def __init__(self, csv_path, size=256, defect: str | None = None, native: bool = False):
        import csv

        path = Path(csv_path)
        if not path.is_file():
            raise InputNotFound(f"--pairs_csv not found: {path}")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            cols = reader.fieldnames or []
            missing = [c for c in ("normal_image", "mask") if c not in cols]
            if missing:
                raise UserError(f"{path}: missing column(s) {', '.join(missing)} (need normal_image, mask[, defect])")
            rows = [r for r in reader if not (defect and (r.get("defect") or "").strip() not in ("", defect))]
        if not rows:
            raise UserError(f"{path}: no rows" + (f" for defect '{defect}'" if defect else ""))
        self.rows = []
        for i, r in enumerate(rows):
            pair = []
            for key in ("normal_image", "mask"):
                p = Path(r[key].strip()).expanduser()
                p = p if p.is_absolute() else path.parent / p
                if not p.is_file():
                    raise InputNotFound(f"{path}, row {i + 1}: {key} not found: {p}")
                pair.append(p)
            self.rows.append(tuple(pair))
        self.size = parse_size(size)
        self.native = bool(native)
        self.length = len(self.rows)

    def __len__(self) -> int:
        return self.length

    def normal_path(self, n: int) -> Path:
        return self.rows[int(n)][0]

    def __getitem__(self, n: int) -> dict:
        from ldm.data.io import load_mask

        image_path, mask_path = self.rows[int(n)]
        image = load_image(image_path, None if self.native else self.size)
        mask = load_mask(mask_path, image.shape[:2]).astype(np.float32)
        if not mask.any():
            raise UserError(f"--pairs_csv row {n + 1}: empty mask {mask_path}")
        return {"image": image, "mask": mask, "normal_path": str(image_path), "mask_origin": str(mask_path),
                "index": int(n), "placement": "explicit"}
