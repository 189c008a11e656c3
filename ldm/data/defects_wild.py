"""A second embedded defect family, "wild", rendered by code unrelated to texture-AD's own renderers.

Why: FAST's recipe and the demo were developed on texture-AD's scratch/stain/crack/hole. A recipe
tuned (even unknowingly) to one renderer must be checked on defects it never saw. These renderers
use other primitives and other ways of changing pixels:

- ``fissure``: a midpoint-displacement fractal polyline whose width tapers from the middle to the
  ends, darkened *multiplicatively* (the texture stays visible in it) with a faint lit edge;
- ``blotch``: a metaball union of random Gaussian blobs, a multiplicative hue/brightness shift that
  varies inside the blotch (no flat colour);
- ``pitting``: a cluster of 5-25 tiny pits (1-3 px), dark cores with bright rims;
- ``abrasion``: a worn band with ragged edges where the texture is blurred and lightened (the
  defect changes texture statistics rather than colour).

Each renderer changes pixels only inside the mask it returns (exact masks), as texture-AD's do.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import ndimage

Renderer = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _apply(image: np.ndarray, mask: np.ndarray, new: np.ndarray) -> np.ndarray:
    out = image.astype(np.float32).copy()
    out[mask] = np.asarray(new, np.float32)[mask]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _retry(fn, rng, min_pixels: int, what: str):
    for _ in range(50):
        out, mask = fn(rng)
        if int(mask.sum()) >= min_pixels:
            return out, mask
    raise RuntimeError(f"{what}: no defect of at least {min_pixels} px after 50 tries")


def _midpoint_polyline(p0, p1, depth: int, rough: float, rng) -> np.ndarray:
    pts = [np.asarray(p0, float), np.asarray(p1, float)]
    for level in range(depth):
        out = [pts[0]]
        for a, b in zip(pts[:-1], pts[1:]):
            d = b - a
            normal = np.array([-d[1], d[0]]) / (np.linalg.norm(d) + 1e-9)
            mid = (a + b) / 2 + normal * rng.normal(0, rough * np.linalg.norm(d))
            out += [mid, b]
        pts = out
    return np.array(pts)


def render_fissure(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    s = min(h, w)

    def one(r):
        c = r.uniform(0.25, 0.75, 2) * (h, w)
        ang = r.uniform(0, math.pi)
        half = r.uniform(0.18, 0.35) * s
        d = np.array([math.sin(ang), math.cos(ang)]) * half
        pts = _midpoint_polyline(c - d, c + d, 5, r.uniform(0.15, 0.3), r)
        dense = np.concatenate([a + (b - a) * t[:, None] for a, b in zip(pts[:-1], pts[1:])
                                for t in [np.linspace(0, 1, 6, endpoint=False)]])
        pos = np.linspace(0, 1, len(dense))
        width = 0.4 + r.uniform(0.8, 1.8) * np.sin(np.pi * pos)  # thickest in the middle
        yy, xx = np.mgrid[0:h, 0:w]
        dist = np.full((h, w), np.inf)
        wid = np.zeros((h, w))
        for (py, px), wd in zip(dense, width):
            dd = np.hypot(yy - py, xx - px)
            closer = dd < dist
            dist[closer], wid[closer] = dd[closer], wd
        mask = dist <= wid
        depth = np.clip(1.0 - dist / np.maximum(wid, 1e-6), 0, 1)[..., None]
        dark = image.astype(np.float32) * (1.0 - r.uniform(0.55, 0.8) * (0.5 + 0.5 * depth))
        lit = ndimage.binary_dilation(mask) & ~mask
        edge = np.zeros_like(mask)
        edge[1:, :] = lit[:-1, :]  # a faint highlight on one side of the fissure, inside the mask band
        new = np.where(edge[..., None] & mask[..., None], image * 1.15, dark)
        return _apply(image, mask, new), mask

    return _retry(one, rng, max(8, s // 10), "fissure")


def render_blotch(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    s = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def one(r):
        c = r.uniform(0.3, 0.7, 2) * (h, w)
        field = np.zeros((h, w), np.float32)
        for _ in range(int(r.integers(3, 8))):
            cy, cx = c + r.normal(0, 0.08 * s, 2)
            sig = r.uniform(0.03, 0.08) * s
            field += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig * sig))
        mask = field > r.uniform(0.5, 0.8)
        inner = np.clip(field / field.max(), 0, 1)[..., None]
        gain = np.array([r.uniform(0.55, 0.8), r.uniform(0.6, 0.85), r.uniform(0.75, 1.05)])
        new = image.astype(np.float32) * (1.0 - inner * (1.0 - gain))
        return _apply(image, mask, new), mask

    return _retry(one, rng, max(12, s * s // 300), "blotch")


def render_pitting(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    s = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def one(r):
        c = r.uniform(0.2, 0.8, 2) * (h, w)
        new = image.astype(np.float32).copy()
        mask = np.zeros((h, w), bool)
        for _ in range(int(r.integers(5, 26))):
            py, px = c + r.normal(0, 0.07 * s, 2)
            rad = r.uniform(1.0, 3.0) * s / 128.0 + 0.6
            d = np.hypot(yy - py, xx - px)
            core, rim = d <= rad, (d > rad) & (d <= rad + 1.0)
            new[core] *= r.uniform(0.15, 0.35)
            new[rim] = np.minimum(new[rim] * 1.35 + 20, 255)
            mask |= core | rim
        return _apply(image, mask, new), mask

    return _retry(one, rng, max(10, s // 8), "pitting")


def render_abrasion(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    s = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    def one(r):
        c = r.uniform(0.3, 0.7, 2) * (h, w)
        th = r.uniform(0, math.pi)
        u = (xx - c[1]) * math.cos(th) + (yy - c[0]) * math.sin(th)
        v = -(xx - c[1]) * math.sin(th) + (yy - c[0]) * math.cos(th)
        length, width = r.uniform(0.2, 0.4) * s, r.uniform(0.04, 0.09) * s
        ragged = ndimage.gaussian_filter(r.normal(0, 1, (h, w)), 1.5) * 0.35 * width
        mask = (np.abs(u) < length) & (np.abs(v) < width + ragged)
        blurred = ndimage.gaussian_filter(image.astype(np.float32), sigma=(2.0, 2.0, 0))
        new = blurred * r.uniform(1.1, 1.3) + r.uniform(10, 25)
        return _apply(image, mask, new), mask

    return _retry(one, rng, max(12, s * s // 300), "abrasion")


WILD_RENDERERS: dict[str, Renderer] = {
    "fissure": render_fissure,
    "blotch": render_blotch,
    "pitting": render_pitting,
    "abrasion": render_abrasion,
}
