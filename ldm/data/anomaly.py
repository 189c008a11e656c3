"""Torch datasets for training, built from YAML params.

``AnomalyDataset`` serves real anomalies (image + mask + caption + ``category+defect`` name) for the
generator; ``NormalImagesDataset`` serves normal images (optionally plus generator-side anomalies)
for training an autoencoder or LDM backbone. Items follow the project contract::

    {"image": H×W×3 float32 [-1, 1], "mask": H×W float32 {0, 1}, "caption": str, "name": "cat+defect"}

All-zero masks in training data (empty in the file, or vanished after resizing to ``size``) are
**skipped with a warning** naming the file (``empty_masks="error"`` turns that into an error): a
sample without an anomaly region carries no signal for a masked loss. Masks whose size differs from
their image's are always an error. Checks run when the dataset is built, so a bad file fails before
training starts; images are decoded lazily and cached per worker at the training size.
"""
from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from torch.utils.data import Dataset

from ldm.data.io import image_size, load_image_uint8, load_mask, parse_size
from ldm.data.layouts import (
    AnomalySample,
    index_category,
    list_categories,
    normalize_category,
    resolve_mvtec_path,
    split_anomalies,
)
from utils.errors import InputNotFound, UserError
from utils.images import uint8_to_float

__all__ = ["AnomalyDataset", "NormalImagesDataset", "ANOMALYDIFFUSION_TEMPLATES", "resolve_templates"]

# Textual-inversion style templates as used by AnomalyDiffusion's loader (``caption_template:
# anomalydiffusion``); one is drawn per item. The exact upstream list is not reproduced here.
ANOMALYDIFFUSION_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
)

_NAMED_TEMPLATES = {"fast": ("Anomaly {}",), "anomalydiffusion": ANOMALYDIFFUSION_TEMPLATES}

_SET_ALIASES = {"train": "train", "training": "train", "validation": "validation", "validate": "validation",
                "val": "validation", "evaluation": "evaluation", "test": "evaluation", "eval": "evaluation"}


def resolve_templates(template: Union[str, Sequence[str]], key: str = "caption_template") -> tuple[str, ...]:
    """A template string, a list of them, or a named set (``fast``, ``anomalydiffusion``)."""
    if isinstance(template, str):
        out = _NAMED_TEMPLATES.get(template.lower(), (template,))
    else:
        out = tuple(str(t) for t in template)
    if not out:
        raise UserError(f"{key} is empty")
    return out


def _fill(template: str, key: str, placeholder: str, category: str, defect: str) -> str:
    """Fields: ``{}`` / ``{placeholder}`` (the learned token), ``{category}``, ``{defect}``, ``{name}``."""
    try:
        return template.format(placeholder, placeholder=placeholder, category=category.replace("_", " "),
                               defect=defect.replace("_", " "), name=f"{category}+{defect}")
    except (KeyError, IndexError, ValueError) as e:
        raise UserError(f"{key} '{template}' is not a valid template ({type(e).__name__}: {e}); "
                         "fields: {}, {placeholder}, {category}, {defect}, {name}") from None


def _norm_set(set_: str) -> str:
    try:
        return _SET_ALIASES[str(set_).lower()]
    except KeyError:
        raise UserError(f"set must be train, validation or evaluation, got {set_!r}") from None


def _as_list(v) -> Optional[list]:
    if v is None:
        return None
    if isinstance(v, (str, int)):
        return [v]
    return list(v)


def _check_pair(image: Path, mask: Path) -> None:
    ih, iw = image_size(image)
    mh, mw = image_size(mask)
    if (ih, iw) != (mh, mw):
        raise UserError(f"mask size {mw}x{mh} differs from image size {iw}x{ih}: {mask} (image {image})")


class _CachedImages(Dataset):
    """Shared item plumbing: lazy decoding at the training size, a per-process cache, h-flips."""

    def _init_common(self, size, repeats: int, flip_p: float, cache_images: bool, crop_size=None) -> None:
        self.size = parse_size(size)
        if self.size is None:
            raise UserError("size must be set (e.g. 256)")
        self.repeats = int(repeats)
        if self.repeats < 1:
            raise UserError(f"repeats must be >= 1, got {repeats}")
        self.flip_p = float(flip_p)
        self.cache_images = bool(cache_images)
        self._cache: dict[int, np.ndarray] = {}
        self.crop_size = parse_size(crop_size)
        if self.crop_size is not None and any(c > s for c, s in zip(self.crop_size, self.size)):
            raise UserError(f"crop_size {crop_size} is larger than size {size}")

    def _image(self, i: int, path: Path) -> np.ndarray:
        a = self._cache.get(i)
        if a is None:
            a = load_image_uint8(path, self.size)
            if self.cache_images:
                self._cache[i] = a
        return a

    def _item(self, image_u8: np.ndarray, mask: np.ndarray, caption: str, name: str) -> dict:
        image = uint8_to_float(image_u8)
        if self.flip_p > 0 and random.random() < self.flip_p:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if self.crop_size is not None:  # a random window: more distinct samples per step for a conv net
            (h, w), (ch, cw) = image.shape[:2], self.crop_size
            top, left = random.randint(0, h - ch), random.randint(0, w - cw)
            image, mask = image[top:top + ch, left:left + cw], mask[top:top + ch, left:left + cw]
        return {"image": np.ascontiguousarray(image, dtype=np.float32),
                "mask": np.ascontiguousarray(mask, dtype=np.float32), "caption": caption, "name": name}


class AnomalyDataset(_CachedImages):
    """Real anomalies for generator training.

    ``category`` / ``defect``: a name, a list, or None for all (AnomalyDiffusion trains one model on
    every ``cat+defect``; FAST one model per pair). ``set``: ``train`` = generator side of
    ``anomaly_split``, repeated ``repeats`` times; ``validation`` = its first ``val_count`` items per
    name, once; ``evaluation`` = the held-out side (what downstream evaluation tests on).
    ``mvtec_path`` accepts FAST's ``<root>/<category>/ground_truth/<defect>/`` as well as a root.
    ``name_template`` sets the item's ``name`` (the embedding key), e.g. ``damaged`` for FAST's BTAD.
    """

    def __init__(self, root=None, category: Union[str, Sequence[str], None] = None,
                 defect: Union[str, Sequence[str], None] = None, layout: str = "mvtec", size=256,
                 set: str = "train", anomaly_split: str = "third",
                 caption_template: Union[str, Sequence[str]] = "Anomaly {}", placeholder: str = "*",
                 repeats: int = 1, flip_p: float = 0.0, layout_params: Optional[dict] = None,
                 empty_masks: str = "skip", val_count: int = 4, cache_images: bool = True,
                 mvtec_path=None, name_template: str = "{category}+{defect}"):
        self.set = _norm_set(set)
        if mvtec_path is not None:
            cat1 = category if isinstance(category, (str, int)) or category is None else None
            def1 = defect if isinstance(defect, str) or defect is None else None
            r, c, d = resolve_mvtec_path(mvtec_path, cat1, def1)
            if root is not None and Path(root).expanduser().resolve() != r.resolve():
                raise UserError(f"mvtec_path {mvtec_path} and root {root} disagree")
            root, category, defect = r, (c if c is not None else category), (d if d is not None else defect)
        if root is None:
            raise UserError("AnomalyDataset needs root (or mvtec_path)")
        if empty_masks not in ("skip", "error"):
            raise UserError(f"empty_masks must be 'skip' or 'error', got {empty_masks!r}")
        self.root = Path(root).expanduser()
        self.layout = layout
        self.anomaly_split = anomaly_split
        self.placeholder = str(placeholder)
        self.templates = resolve_templates(caption_template)
        self._init_common(size, repeats if self.set == "train" else 1, flip_p if self.set == "train" else 0.0,
                          cache_images)
        lp = dict(layout_params or {})

        cats = _as_list(category)
        if cats is None:
            cats = list_categories(layout, self.root, **lp)
            if not cats:
                raise InputNotFound(f"no categories found under {self.root} ({layout} layout)")
        cats = [normalize_category(layout, c) for c in cats]
        self.samples: list[AnomalySample] = []
        self.masks: list[np.ndarray] = []
        for cat in cats:
            idx = index_category(layout, self.root, cat, **lp)
            defects = _as_list(defect)
            if defects is None:
                defects = idx.defects
                if not defects:
                    raise UserError(f"empty split: no anomalies for category '{cat}' under {self.root}")
            for d in defects:
                samples = idx.samples(str(d))
                gen, ev = split_anomalies(samples, anomaly_split)
                chosen = ev if self.set == "evaluation" else gen
                if not chosen:
                    hint = " (fewer than 3 anomalies; use anomaly_split: all)" if anomaly_split == "third" else ""
                    raise UserError(f"empty split: anomaly_split={anomaly_split} leaves no {self.set} anomalies "
                                     f"of {idx.category}+{d} out of {len(samples)} under {self.root}{hint}")
                kept = self._load_masks(chosen, empty_masks)
                if self.set == "validation":
                    kept = kept[:max(1, int(val_count))]
                for s, m in kept:
                    self.samples.append(s)
                    self.masks.append(m)
        if not self.samples:
            raise UserError(f"empty split: no usable {self.set} anomalies under {self.root} "
                             f"(category={category!r}, defect={defect!r})")
        for t in self.templates:
            _fill(t, "caption_template", self.placeholder, "c", "d")
        self.name_template = str(name_template)
        try:
            self.names = sorted({self._name(s) for s in self.samples})
        except (KeyError, IndexError, ValueError) as e:
            raise UserError(f"name_template '{name_template}' is not valid ({type(e).__name__}: {e}); "
                             "fields: {category}, {defect}") from None
        if self.cache_images:  # a few dozen images: decode now, so a truncated file fails before training
            for j, s in enumerate(self.samples):
                self._image(j, s.image)

    def _name(self, s: AnomalySample) -> str:
        return self.name_template.format(category=s.category, defect=s.defect)

    def _load_masks(self, samples: list[AnomalySample], empty_masks: str) -> list[tuple[AnomalySample, np.ndarray]]:
        kept = []
        for s in samples:
            _check_pair(s.image, s.mask)
            m = load_mask(s.mask, self.size)
            if not m.any():
                msg = f"all-zero mask at size {self.size[1]}x{self.size[0]}: {s.mask}"
                if empty_masks == "error":
                    raise UserError(msg)
                warnings.warn(msg + " (skipped)")
                continue
            kept.append((s, m.astype(bool)))
        return kept

    def __len__(self) -> int:
        return len(self.samples) * self.repeats

    def __getitem__(self, i: int) -> dict:
        j = i % len(self.samples)
        s = self.samples[j]
        t = self.templates[0] if len(self.templates) == 1 else random.choice(self.templates)
        caption = _fill(t, "caption_template", self.placeholder, s.category, s.defect)
        return self._item(self._image(j, s.image), self.masks[j].astype(np.float32), caption, self._name(s))


class NormalImagesDataset(_CachedImages):
    """Normal images (``train/good``) of one, several or all categories for backbone training,
    optionally plus the generator-side anomalies (never the evaluation side).

    ``set: validation`` holds out the last ``val_count`` normal images of each category (they are
    left out of ``train``), so backbone validation never touches test data.
    """

    def __init__(self, root, categories: Union[str, Sequence[str], None] = None, layout: str = "mvtec", size=256,
                 caption_template: Union[str, Sequence[str]] = "a photo of {category}",
                 include_anomalies: bool = False,
                 anomaly_caption_template: Union[str, Sequence[str]] = "a photo of {defect} on {category}",
                 anomaly_split: str = "third", repeats: int = 1, set: str = "train", val_count: int = 2,
                 flip_p: float = 0.0, layout_params: Optional[dict] = None, placeholder: str = "*",
                 empty_masks: str = "skip", cache_images: bool = False, crop_size=None):
        self.set = _norm_set(set)
        if self.set == "evaluation":
            raise UserError("NormalImagesDataset set must be train or validation")
        self.root = Path(root).expanduser()
        self.templates = resolve_templates(caption_template)
        self.anomaly_templates = resolve_templates(anomaly_caption_template, "anomaly_caption_template")
        self.placeholder = str(placeholder)
        self._init_common(size, repeats if self.set == "train" else 1, flip_p if self.set == "train" else 0.0,
                          cache_images, crop_size if self.set == "train" else None)
        lp = dict(layout_params or {})
        cats = _as_list(categories)
        if cats is None:
            cats = list_categories(layout, self.root, **lp)
            if not cats:
                raise InputNotFound(f"no categories found under {self.root} ({layout} layout)")
        # (image path, mask path or None, category, defect)
        self.entries: list[tuple[Path, Optional[Path], str, str]] = []
        self.masks: dict[int, np.ndarray] = {}
        v = max(0, int(val_count))
        for cat in (normalize_category(layout, c) for c in cats):
            idx = index_category(layout, self.root, cat, **lp)
            good = list(idx.train_good)
            hold = min(v, len(good) - 1) if len(good) > 1 else 0
            chosen = good[len(good) - hold:] if self.set == "validation" else good[:len(good) - hold]
            self.entries += [(p, None, idx.category, "good") for p in chosen]
            if include_anomalies and self.set == "train":
                for d in idx.defects:
                    gen, _ = split_anomalies(idx.samples(d), anomaly_split)
                    for s in gen:
                        _check_pair(s.image, s.mask)
                        m = load_mask(s.mask, self.size)
                        if not m.any():
                            if empty_masks == "error":
                                raise UserError(f"all-zero mask: {s.mask}")
                            warnings.warn(f"all-zero mask: {s.mask} (skipped)")
                            continue
                        self.masks[len(self.entries)] = m.astype(bool)
                        self.entries.append((s.image, s.mask, s.category, s.defect))
        if not self.entries:
            raise UserError(f"empty split: no {self.set} images under {self.root} (categories={categories!r})")
        for t in self.templates + self.anomaly_templates:
            _fill(t, "caption_template", self.placeholder, "c", "d")

    def __len__(self) -> int:
        return len(self.entries) * self.repeats

    def __getitem__(self, i: int) -> dict:
        j = i % len(self.entries)
        path, mask_path, cat, defect = self.entries[j]
        templates = self.templates if mask_path is None else self.anomaly_templates
        t = templates[0] if len(templates) == 1 else random.choice(templates)
        caption = _fill(t, "caption_template", self.placeholder, cat, defect)
        if mask_path is None:
            mask = np.zeros(self.size, dtype=np.float32)
        else:
            mask = self.masks[j].astype(np.float32)
        return self._item(self._image(j, path), mask, caption, f"{cat}+{defect}")
