"""Datasets for the downstream segmenter: synthetic pairs mixed with normals, and the real test side.

Why these choices:

* Training follows AnomalyDiffusion's localisation recipe: each sample is a *normal* image with an
  empty mask with probability ``normal_ratio`` (0.5), otherwise a random synthetic pair.  Without
  normals a segmenter learns that every image contains a defect.
* Sampling is a pure function of ``(seed, index)``: a fixed step budget reads a fixed sequence of
  samples, so two synthesizers compared with the same seed see the same normals at the same steps.
* Evaluation uses the *evaluation side* of the per-defect split (``ldm.data.layouts.split_anomalies``)
  plus all ``test/good`` images: real anomalies the generator never saw.  The synthetic pairs are
  only ever used for training or for a validation split carved out of them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from ldm.data.io import load_image, load_mask
from ldm.data.layouts import CategoryIndex, split_anomalies
from ldm.pairs import PairFiles, read_pairs
from utils.errors import UserError

EVAL_SET_DESCRIPTION = "real held-out anomalies (evaluation side of the split) + test/good"


def scan_pairs(root, sample_name: str | None = None) -> list[PairFiles]:
    """All complete pairs under ``root`` (the output root, one category folder, or one category/defect
    folder), folder by folder in natural order, read by ``ldm.pairs.read_pairs``; ``sample_name`` keeps
    that category only. Empty when there is none."""
    return [p for folder in read_pairs(root, sample_name) for p in folder.pairs]


def split_validation(records: Sequence[PairFiles], fraction: float, seed: int = 0
                     ) -> tuple[list[PairFiles], list[PairFiles]]:
    """(train, val) from synthetic pairs only; a seeded shuffle, at least one pair each side when possible."""
    records = list(records)
    if fraction <= 0 or len(records) < 2:
        return records, []
    if fraction >= 1:
        raise UserError(f"--val_fraction must be < 1, got {fraction}")
    order = np.random.default_rng(seed).permutation(len(records))
    n_val = min(len(records) - 1, max(1, int(round(fraction * len(records)))))
    val = [records[i] for i in sorted(order[:n_val])]
    train = [records[i] for i in sorted(order[n_val:])]
    return train, val


class PairsDataset(Dataset):
    """Synthetic pairs as ``{"image" HWC [-1,1], "mask" HW {0,1}, "label", "name", "path"}`` (validation use)."""

    def __init__(self, records: Sequence[PairFiles], size=256):
        self.records, self.size = list(records), size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        mask = load_mask(r.mask, self.size)
        return {"image": load_image(r.image, self.size), "mask": mask, "label": int(mask.any()),
                "name": f"{r.category}+{r.defect}", "path": str(r.image)}


class MixedTrainSet(Dataset):
    """``length`` samples; sample i is normal (empty mask) with prob. ``normal_ratio``, else a synthetic pair.

    Each draw uses ``np.random.default_rng([seed, i])``, so the stream is reproducible and identical
    across synthesizers for the normal draws.  ``augment`` adds horizontal/vertical flips (p=0.5 each),
    the flips of AnomalyDiffusion's ``data_enhance``.
    """

    def __init__(self, pairs: Sequence[PairFiles], normal_paths: Sequence[Path], size=256, length: int = 1000,
                 normal_ratio: float = 0.5, seed: int = 0, augment: bool = True):
        if not 0.0 <= normal_ratio <= 1.0:
            raise UserError(f"normal_ratio must be in [0, 1], got {normal_ratio}")
        self.pairs, self.normals = list(pairs), [Path(p) for p in normal_paths]
        if not self.pairs and normal_ratio < 1.0:
            raise UserError("no synthetic pairs to train on (empty pairs folder?)")
        if not self.normals and normal_ratio > 0.0:
            raise UserError("no normal training images (train/good is empty)")
        self.size, self.length, self.normal_ratio = size, int(length), float(normal_ratio)
        self.seed, self.augment = int(seed), bool(augment)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        rng = np.random.default_rng([self.seed, int(i)])
        if not self.pairs or (self.normals and rng.random() < self.normal_ratio):
            path = self.normals[int(rng.integers(len(self.normals)))]
            image = load_image(path, self.size)
            mask = np.zeros(image.shape[:2], np.float32)
            synthetic = False
        else:
            r = self.pairs[int(rng.integers(len(self.pairs)))]
            image, mask, path, synthetic = load_image(r.image, self.size), load_mask(r.mask, self.size), r.image, True
        if self.augment:
            if rng.random() < 0.5:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if rng.random() < 0.5:
                image, mask = image[::-1], mask[::-1]
        return {"image": np.ascontiguousarray(image), "mask": np.ascontiguousarray(mask),
                "synthetic": synthetic, "path": str(path)}


class EvaluationSet(Dataset):
    """Real test images: every defect's evaluation side of ``split`` plus ``test/good`` (empty masks).

    ``split="third"`` holds out the generator's third (no overlap); ``"all"`` evaluates on anomalies the
    generator may have trained on -- allowed for reproduction, but then the numbers are not test numbers.
    """

    def __init__(self, index: CategoryIndex, size=256, split: str = "third", include_good: bool = True):
        self.size, self.category, self.split = size, index.category, split
        self.items: list[tuple[Path, Path | None, str]] = []
        for defect in index.defects:
            _, evaluation = split_anomalies(index.samples(defect), split)
            self.items.extend((s.image, s.mask, defect) for s in evaluation)
        if include_good:
            self.items.extend((p, None, "good") for p in index.test_good)
        if not self.items:
            raise UserError(f"category '{index.category}' under {index.root}: no test images to evaluate on")

    @property
    def description(self) -> str:
        if self.split == "all":
            return "real anomalies NOT held out (split 'all': the generator may have seen them) + test/good"
        return f"real held-out anomalies (evaluation side of the split, mode '{self.split}') + test/good"

    @property
    def labels(self) -> list[int]:
        """Image labels (1 = anomalous) without loading any image."""
        return [int(defect != "good") for _, _, defect in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        image_path, mask_path, defect = self.items[i]
        image = load_image(image_path, self.size)
        mask = load_mask(mask_path, self.size) if mask_path is not None else np.zeros(image.shape[:2], np.float32)
        return {"image": image, "mask": mask, "label": int(defect != "good"), "name": defect,
                "path": str(image_path)}
