"""Mask sources for generation: real masks, geometrically augmented real masks, DRAEM Perlin masks.

Every source's ``draw(index)`` is a pure function of ``(seed, index)``: the random generator is
``np.random.default_rng([seed, stream, index])``, so mask n is the same whatever the batch size,
worker count or resumption point. Candidates are filtered by ``mask_ok`` (empty, too small, too
large, hugging the border) and retried a bounded number of times; running out raises one clear
error that names the filter to loosen.

Masks are float32 H×W in {0, 1}, 1 = the anomaly region to generate.
"""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from scipy import ndimage

from ldm.data.io import IMAGE_EXTENSIONS, list_image_files, load_mask, parse_size
from utils.errors import InputNotFound, UserError

__all__ = [
    "perlin_noise",
    "perlin_mask",
    "augment_mask",
    "mask_ok",
    "MaskSource",
    "RealMasks",
    "AugmentedMasks",
    "PerlinMasks",
]


# ----------------------------------------------------------------------------------------------
# primitives
# ----------------------------------------------------------------------------------------------

def _fade(t: np.ndarray) -> np.ndarray:
    """Perlin's quintic 6t^5 - 15t^4 + 10t^3 (zero first and second derivative at 0 and 1)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape, res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise of ``shape`` (H, W) with ``res`` = (cells along y, cells along x).

    Unit gradients at random angles sit on the (res+1)² lattice; any H, W works (no divisibility
    needed). Scaled by √2 so values span about [-1, 1], as DRAEM's ``rand_perlin_2d``.
    """
    h, w = parse_size(shape)
    ry, rx = int(res[0]), int(res[1])
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = np.arange(h, dtype=np.float64) * ry / h
    x = np.arange(w, dtype=np.float64) * rx / w
    iy, ix = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]
    iy, ix = iy[:, None], ix[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gx[iy + dy, ix + dx] * (fx - dx) + gy[iy + dy, ix + dx] * (fy - dy)

    u, v = _fade(fx), _fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (math.sqrt(2.0) * (top * (1 - v) + bottom * v)).astype(np.float32)


def perlin_mask(size, rng: np.random.Generator, min_scale: int = 0, max_scale: int = 6,
                threshold: float = 0.5, max_rotate: float = 90.0) -> np.ndarray:
    """DRAEM-style mask: noise at 2^kx × 2^ky cells (k in [min_scale, max_scale)), rotated by
    U(-max_rotate, max_rotate) degrees (corners filled with 0), foreground where noise > threshold."""
    h, w = parse_size(size)
    ky, kx = rng.integers(min_scale, max_scale, size=2)
    noise = perlin_noise((h, w), (2 ** int(ky), 2 ** int(kx)), rng)
    angle = float(rng.uniform(-max_rotate, max_rotate))
    if angle:
        noise = ndimage.rotate(noise, angle, reshape=False, order=1, mode="constant", cval=0.0)
    return (noise > threshold).astype(np.float32)


def augment_mask(mask: np.ndarray, rng: np.random.Generator, flip_p: float = 0.5, rot90: bool = True,
                 max_rotate: float = 15.0, scale: Sequence[float] = (0.85, 1.15),
                 max_translate: float = 0.05) -> np.ndarray:
    """Flips, a multiple of 90° (square masks), then a small rotation/scale about the mask's centroid
    plus a translation of at most ``max_translate`` × size; re-binarised at 0.5. Same shape out."""
    m = (np.asarray(mask) > 0.5).astype(np.float32)
    if m.ndim != 2:
        raise UserError(f"augment_mask expects an H×W mask, got shape {m.shape}")
    if rng.random() < flip_p:
        m = m[:, ::-1]
    if rng.random() < flip_p:
        m = m[::-1, :]
    if rot90:
        k = int(rng.integers(4)) if m.shape[0] == m.shape[1] else 2 * int(rng.integers(2))
        m = np.rot90(m, k)
    m = np.ascontiguousarray(m)
    h, w = m.shape
    theta = math.radians(float(rng.uniform(-max_rotate, max_rotate)))
    s = float(rng.uniform(scale[0], scale[1]))
    t = rng.uniform(-max_translate, max_translate, size=2) * np.array([h, w])
    if m.any():
        c = np.array(ndimage.center_of_mass(m))
    else:
        c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    # output coordinate o maps from input i = R(-θ)(o - c - t)/s + c
    cos, sin = math.cos(theta), math.sin(theta)
    inv = np.array([[cos, sin], [-sin, cos]]) / s
    offset = c - inv @ (c + t)
    out = ndimage.affine_transform(m, inv, offset=offset, order=1, mode="constant", cval=0.0)
    return (out >= 0.5).astype(np.float32)


def mask_ok(mask: np.ndarray, min_area_frac: float = 0.0, max_border_frac: float = 1.0,
            max_area_frac: float = 1.0) -> bool:
    """False when the mask is empty, covers less than ``min_area_frac`` or more than
    ``max_area_frac`` of the image, or any border row/column is more than ``max_border_frac``
    foreground (AnomalyDiffusion's ``check_mask`` uses 1/3)."""
    m = np.asarray(mask) > 0.5
    if m.ndim != 2 or not m.any():
        return False
    area = float(m.mean())
    if area < min_area_frac or area > max_area_frac:
        return False
    edges = (m[0, :], m[-1, :], m[:, 0], m[:, -1])
    return all(float(e.mean()) <= max_border_frac for e in edges)


# ----------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------

class MaskSource:
    """Base class: ``draw(index)`` proposes candidates from a per-index generator until one passes
    the filter; subclasses implement ``_propose(rng) -> (mask, origin)``."""

    stream = 0

    def __init__(self, size=256, seed: int = 0, min_area_frac: float = 0.0, max_border_frac: float = 1.0,
                 max_area_frac: float = 1.0, max_tries: int = 100):
        self.size = parse_size(size)
        if int(seed) < 0:
            raise UserError(f"seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.min_area_frac = float(min_area_frac)
        self.max_border_frac = float(max_border_frac)
        self.max_area_frac = float(max_area_frac)
        self.max_tries = int(max_tries)
        if self.max_tries < 1:
            raise UserError(f"max_tries must be >= 1, got {max_tries}")

    def rng(self, index: int) -> np.random.Generator:
        if int(index) < 0:
            raise IndexError(f"mask index must be >= 0, got {index}")
        return np.random.default_rng([self.seed, self.stream, int(index)])

    def ok(self, mask: np.ndarray) -> bool:
        return mask_ok(mask, self.min_area_frac, self.max_border_frac, self.max_area_frac)

    def _propose(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        raise NotImplementedError

    def draw_with_info(self, index: int) -> tuple[np.ndarray, str]:
        """(mask, origin) where origin says where the mask came from (a path or the generator)."""
        rng = self.rng(index)
        for _ in range(self.max_tries):
            mask, origin = self._propose(rng)
            if self.ok(mask):
                return mask.astype(np.float32, copy=False), origin
        raise RuntimeError(
            f"{type(self).__name__}: no mask passed the filter in {self.max_tries} tries for index "
            f"{index} (min_area_frac={self.min_area_frac}, max_border_frac={self.max_border_frac}, "
            f"max_area_frac={self.max_area_frac}); loosen the filter or raise max_tries")

    def draw(self, index: int) -> np.ndarray:
        """Mask number ``index``: H×W float32 {0, 1}, a pure function of (seed, index)."""
        return self.draw_with_info(index)[0]

    __getitem__ = draw


PathList = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _mask_paths(paths: PathList) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        p = Path(paths)
        if p.is_dir():
            files = list_image_files(p, IMAGE_EXTENSIONS)
            if not files:
                raise UserError(f"empty split: no mask images in {p}")
            return files
        if not p.is_file():
            raise InputNotFound(f"mask folder or file not found: {p}")
        return [p]
    out = [Path(p) for p in paths]
    for p in out:
        if not p.is_file():
            raise InputNotFound(f"mask file not found: {p}")
    return out


class RealMasks(MaskSource):
    """Real masks of one defect type, drawn uniformly (FAST's generation behaviour).

    Give ``paths`` (a folder, a file, or a list of files), or ``root``/``category``/``defect`` (+
    ``layout``) to take the masks of the *generator* side of ``anomaly_split`` -- so test-mask
    shapes never leak into generation. Masks failing the filter are dropped once, with a warning.
    """

    stream = 1

    def __init__(self, paths: Optional[PathList] = None, size=256, seed: int = 0, root=None,
                 category: Optional[str] = None, defect: Optional[str] = None, layout: str = "mvtec",
                 anomaly_split: str = "third", layout_params: Optional[dict] = None,
                 min_area_frac: float = 0.0, max_border_frac: float = 1.0, max_area_frac: float = 1.0,
                 max_tries: int = 100):
        super().__init__(size, seed, min_area_frac, max_border_frac, max_area_frac, max_tries)
        if (paths is None) == (root is None):
            raise UserError(f"{type(self).__name__}: give either paths or root/category/defect")
        if paths is not None:
            files = _mask_paths(paths)
            where = str(paths) if isinstance(paths, (str, os.PathLike)) else f"{len(files)} listed files"
        else:
            from ldm.data.layouts import index_category, split_anomalies
            if category is None or defect is None:
                raise UserError(f"{type(self).__name__}: root needs category and defect")
            idx = index_category(layout, root, category, **(layout_params or {}))
            gen, _ = split_anomalies(idx.samples(defect), anomaly_split)
            files = [s.mask for s in gen]
            where = f"{root} {idx.category}+{defect} (anomaly_split={anomaly_split})"
            if not files:
                raise UserError(f"empty split: no generator-side masks for {where}")
        self.paths: list[Path] = []
        self.masks: list[np.ndarray] = []
        rejected = []
        for f in files:
            m = load_mask(f, self.size)
            if self._base_ok(m):
                self.paths.append(f)
                self.masks.append(m.astype(bool))
            else:
                rejected.append(f)
        if rejected:
            warnings.warn(f"{type(self).__name__}: {len(rejected)} of {len(files)} masks dropped by the "
                          f"filter (e.g. {rejected[0]})")
        if not self.masks:
            raise UserError(f"{type(self).__name__}: no usable mask in {where} (all empty or filtered)")

    def _base_ok(self, mask: np.ndarray) -> bool:
        return self.ok(mask)

    def __len__(self) -> int:
        return len(self.masks)

    def _pick(self, rng: np.random.Generator) -> int:
        return int(rng.integers(len(self.masks)))

    def _propose(self, rng):
        i = self._pick(rng)
        return self.masks[i].astype(np.float32), str(self.paths[i])


class AugmentedMasks(RealMasks):
    """Real masks with geometric augmentation (``augment_mask``); the filter applies to the result,
    and base masks only need to be non-empty. Defaults reject masks hugging the border (1/3)."""

    stream = 2

    def __init__(self, paths: Optional[PathList] = None, size=256, seed: int = 0, root=None,
                 category: Optional[str] = None, defect: Optional[str] = None, layout: str = "mvtec",
                 anomaly_split: str = "third", layout_params: Optional[dict] = None,
                 flip_p: float = 0.5, rot90: bool = True, max_rotate: float = 15.0,
                 scale: Sequence[float] = (0.85, 1.15), max_translate: float = 0.05,
                 min_area_frac: float = 0.0005, max_border_frac: float = 1.0 / 3.0,
                 max_area_frac: float = 1.0, max_tries: int = 100):
        self.augment = dict(flip_p=float(flip_p), rot90=bool(rot90), max_rotate=float(max_rotate),
                            scale=(float(scale[0]), float(scale[1])), max_translate=float(max_translate))
        super().__init__(paths, size, seed, root, category, defect, layout, anomaly_split, layout_params,
                         min_area_frac, max_border_frac, max_area_frac, max_tries)

    def _base_ok(self, mask: np.ndarray) -> bool:
        return bool(np.any(mask > 0.5))

    def _propose(self, rng):
        i = self._pick(rng)
        return augment_mask(self.masks[i], rng, **self.augment), f"augmented:{self.paths[i]}"


class PerlinMasks(MaskSource):
    """DRAEM Perlin masks (``perlin_mask``) with area and border filtering."""

    stream = 3

    def __init__(self, size=256, seed: int = 0, min_scale: int = 0, max_scale: int = 6,
                 threshold: float = 0.5, max_rotate: float = 90.0, min_area_frac: float = 0.001,
                 max_border_frac: float = 1.0 / 3.0, max_area_frac: float = 0.5, max_tries: int = 100):
        super().__init__(size, seed, min_area_frac, max_border_frac, max_area_frac, max_tries)
        if not 0 <= min_scale < max_scale:
            raise UserError(f"need 0 <= min_scale < max_scale, got {min_scale}, {max_scale}")
        self.params = dict(min_scale=int(min_scale), max_scale=int(max_scale), threshold=float(threshold),
                           max_rotate=float(max_rotate))

    def _propose(self, rng):
        return perlin_mask(self.size, rng, **self.params), "perlin"
