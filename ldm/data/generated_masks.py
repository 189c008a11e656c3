"""Masks for and from the mask-TI model (``ldm.models.diffusion.mask_ti``).

- ``DefectMasksDataset``: the generator-side real masks of one category's defect types (the same split
  the image generator trains on, so test masks never reach it), geometrically augmented, as training
  items ``{"mask": H×W {0,1}, "name": "category+defect"}``.
- ``GeneratedMasks``: a ``MaskSource`` drawing masks from a trained mask model (``--mask_source
  generated``). Mask n is a pure function of ``(seed, n)``: its sampling noise is seeded from the
  source's per-index generator.
"""
from __future__ import annotations

import random
from typing import Optional, Sequence, Union

import numpy as np
import torch.nn.functional as F
from torch.utils.data import Dataset

from ldm.data.io import load_mask, parse_size
from ldm.data.layouts import index_category, normalize_category, resolve_mvtec_path, split_anomalies
from ldm.data.masks import MaskSource, augment_mask
from utils.errors import UserError

__all__ = ["DefectMasksDataset", "GeneratedMasks"]


class DefectMasksDataset(Dataset):
    """Real masks of ``category`` (one defect type, a list, or None = all), generator side of
    ``anomaly_split``, repeated ``repeats`` times; ``augment`` applies ``augment_mask`` per item."""

    def __init__(self, root=None, category: Optional[str] = None, defect: Union[str, Sequence[str], None] = None,
                 layout: str = "mvtec", size=64, anomaly_split: str = "third", repeats: int = 1,
                 augment: bool = True, augment_params: Optional[dict] = None, layout_params: Optional[dict] = None,
                 mvtec_path=None, name_template: str = "{category}+{defect}"):
        if mvtec_path is not None:
            root, c, d = resolve_mvtec_path(mvtec_path, category, defect if isinstance(defect, str) else None)
            category, defect = c or category, d or defect
        if root is None or category is None:
            raise UserError("DefectMasksDataset needs root and category (or mvtec_path)")
        self.size = parse_size(size)
        self.repeats = int(repeats)
        if self.repeats < 1:
            raise UserError(f"repeats must be >= 1, got {repeats}")
        self.augment = bool(augment)
        self.augment_params = dict(augment_params or {})
        idx = index_category(layout, root, normalize_category(layout, category), **(layout_params or {}))
        defects = [defect] if isinstance(defect, str) else (list(defect) if defect is not None else idx.defects)
        self.masks: list[np.ndarray] = []
        self.names: list[str] = []
        self.paths = []
        for d in defects:
            gen, _ = split_anomalies(idx.samples(str(d)), anomaly_split)
            for s in gen:
                m = load_mask(s.mask, self.size)
                if m.any():
                    self.masks.append(m)
                    self.names.append(name_template.format(category=s.category, defect=s.defect))
                    self.paths.append(s.mask)
        if not self.masks:
            raise UserError(f"no generator-side masks for {category} ({defects}) under {root}")

    def __len__(self) -> int:
        return len(self.masks) * self.repeats

    def __getitem__(self, i: int) -> dict:
        j = i % len(self.masks)
        m = self.masks[j]
        if self.augment:
            # ``random`` is seeded per item by the training loader: reproducible and resumable
            m = augment_mask(m, np.random.default_rng(random.getrandbits(63)), **self.augment_params)
            if not m.any():
                m = self.masks[j]
        return {"mask": np.ascontiguousarray(m, dtype=np.float32), "name": self.names[j]}


class GeneratedMasks(MaskSource):
    """Masks sampled from a mask-TI model for one ``category+defect`` name.

    ``model``: a ``MaskDiffusion`` (see ``from_run`` for a run folder). Each proposal samples one mask
    with noise seeded from the per-index generator, resizes it to ``size`` (bilinear, ≥ 0.5) and goes
    through the usual filter (empty masks are always rejected; ``min_area_frac`` etc. as in
    ``MaskSource``).
    """

    stream = 4

    def __init__(self, model, name: str, size=256, seed: int = 0, steps: int = 50, sampler: str = "ddim",
                 sampler_kw: Optional[dict] = None, min_area_frac: float = 0.0, max_border_frac: float = 1.0,
                 max_area_frac: float = 1.0, max_tries: int = 20):
        super().__init__(size, seed, min_area_frac, max_border_frac, max_area_frac, max_tries)
        if name not in model.tokens.names:
            raise UserError(f"the mask model has no token for '{name}'; it knows: {', '.join(model.tokens.names)}")
        self.model, self.name = model, str(name)
        self.steps, self.sampler, self.sampler_kw = int(steps), str(sampler), dict(sampler_kw or {})
        self.paths: list = []  # no files: provenance lists no mask files for generated masks
        self.step: Optional[int] = None

    @classmethod
    def from_run(cls, pt_path, name: str, size=256, seed: int = 0, weight_idx: Optional[int] = None,
                 config=None, device="cpu", **kw) -> "GeneratedMasks":
        from ldm.models.diffusion.mask_ti import load_mask_run

        model, step = load_mask_run(pt_path, weight_idx, config, device)
        out = cls(model, name, size=size, seed=seed, **kw)
        out.step = step
        return out

    def _propose(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        from ldm.models.diffusion.samplers.rng import BatchRNG

        noise_seed = int(rng.integers(0, 2 ** 31 - 1))
        m = self.model.sample_masks([self.name], BatchRNG([noise_seed]), steps=self.steps, sampler=self.sampler,
                                    **self.sampler_kw)
        m = m[:, None].float()
        h, w = self.size
        if tuple(m.shape[-2:]) != (h, w):
            m = (F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False) >= 0.5).float()
        return m[0, 0].cpu().numpy().astype(np.float32), f"generated:{self.name}:{noise_seed}"
