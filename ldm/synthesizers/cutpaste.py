"""CutPaste (Li et al., CVPR 2021) as a pair synthesizer: patch and scar variants, plus a mask-shaped one.

No official code exists (``docs/method.md`` §5.2, "CutPaste"); the parameters below are the commonly used ones:

* ``patch``: a rectangle of area U(2 %, 15 %) of the image with aspect ratio log-uniform in
  [0.3, 1/0.3] is cut at one random place, colour-jittered (brightness, contrast, saturation, hue
  ±0.1) and pasted at another; the mask is the pasted box.
* ``scar``: a thin rectangle, width U(2, 16) px and length U(10, 25) px (at 256 px; scaled with the
  image), colour-jittered, rotated by U(−45°, 45°) and pasted; the mask is the rotated rectangle.
* ``mask``: the *given* mask's shape is filled with content cut from another place of the same
  image (jittered) -- lets CutPaste use the same mask source as the other synthesizers.

``variant="patch_scar"`` (default) picks patch or scar with probability 1/2 per pair; in that case
and for ``patch``/``scar`` the mask source is not used.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

from utils.images import float_to_uint8, uint8_to_float

VARIANTS = ("patch", "scar", "patch_scar", "mask")


def color_jitter(a: np.ndarray, rng: np.random.Generator, strength: float = 0.1) -> np.ndarray:
    """Brightness, contrast, saturation factors U(1±s) and a hue shift U(±s) of the hue circle."""
    im = Image.fromarray(a)
    im = ImageEnhance.Brightness(im).enhance(rng.uniform(1 - strength, 1 + strength))
    im = ImageEnhance.Contrast(im).enhance(rng.uniform(1 - strength, 1 + strength))
    im = ImageEnhance.Color(im).enhance(rng.uniform(1 - strength, 1 + strength))
    hsv = np.asarray(im.convert("HSV")).astype(np.int32)
    hsv[..., 0] = (hsv[..., 0] + int(round(rng.uniform(-strength, strength) * 255))) % 256
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


class CutPasteSynthesizer:
    """``(image [-1,1], mask, rng) -> (image with pasted region, mask of the pasted pixels)``."""

    name = "cutpaste"

    def __init__(self, variant: str = "patch_scar", area_ratio=(0.02, 0.15), aspect_ratio: float = 0.3,
                 scar_width=(2, 16), scar_length=(10, 25), scar_angle: float = 45.0, jitter: float = 0.1):
        if variant not in VARIANTS:
            raise ValueError(f"--cutpaste_variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.area_ratio, self.aspect_ratio = tuple(area_ratio), float(aspect_ratio)
        self.scar_width, self.scar_length, self.scar_angle = tuple(scar_width), tuple(scar_length), float(scar_angle)
        self.jitter = float(jitter)

    @property
    def uses_mask_source(self) -> bool:
        return self.variant == "mask"

    # -- variants on uint8 images; each returns (image u8, mask bool)
    def _patch(self, a: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        h, w = a.shape[:2]
        area = rng.uniform(*self.area_ratio) * h * w
        aspect = math.exp(rng.uniform(math.log(self.aspect_ratio), -math.log(self.aspect_ratio)))
        ph = int(np.clip(round(math.sqrt(area / aspect)), 1, h))
        pw = int(np.clip(round(math.sqrt(area * aspect)), 1, w))
        sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        patch = color_jitter(np.ascontiguousarray(a[sy:sy + ph, sx:sx + pw]), rng, self.jitter)
        out = a.copy()
        out[ty:ty + ph, tx:tx + pw] = patch
        mask = np.zeros((h, w), bool)
        mask[ty:ty + ph, tx:tx + pw] = True
        return out, mask

    def _scar(self, a: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        h, w = a.shape[:2]
        s = min(h, w) / 256.0
        sw = int(max(1, min(w, round(rng.uniform(*self.scar_width) * s))))
        sl = int(max(2, min(h, round(rng.uniform(*self.scar_length) * s))))
        sy, sx = rng.integers(0, h - sl + 1), rng.integers(0, w - sw + 1)
        patch = color_jitter(np.ascontiguousarray(a[sy:sy + sl, sx:sx + sw]), rng, self.jitter)
        angle = float(rng.uniform(-self.scar_angle, self.scar_angle))
        rp = np.asarray(Image.fromarray(patch).rotate(angle, resample=Image.BILINEAR, expand=True))
        alpha = np.asarray(Image.fromarray(np.full((sl, sw), 255, np.uint8)).rotate(
            angle, resample=Image.BILINEAR, expand=True)) >= 128
        ph, pw = alpha.shape
        ph, pw = min(ph, h), min(pw, w)
        rp, alpha = rp[:ph, :pw], alpha[:ph, :pw]
        ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        out = a.copy()
        region = out[ty:ty + ph, tx:tx + pw]
        region[alpha] = rp[alpha]
        mask = np.zeros((h, w), bool)
        mask[ty:ty + ph, tx:tx + pw] = alpha
        return out, mask

    def _mask_shaped(self, a: np.ndarray, m: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
        h, w = a.shape[:2]
        if not m.any():
            return a.copy(), m
        ys, xs = np.nonzero(m)
        y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
        # shifts that keep the mask's bounding box inside the image, excluding near-zero ones
        dys = np.arange(-y0, h - y1)
        dxs = np.arange(-x0, w - x1)
        far = (np.abs(dys)[:, None] > (y1 - y0 + 1) // 2) | (np.abs(dxs)[None, :] > (x1 - x0 + 1) // 2)
        src = color_jitter(a, rng, self.jitter)
        if far.any():
            cand = np.argwhere(far)
            dy_i, dx_i = cand[int(rng.integers(len(cand)))]
            dy, dx = int(dys[dy_i]), int(dxs[dx_i])
            src = np.roll(src, (-dy, -dx), axis=(0, 1))                # src[y, x] = jittered a[y + dy, x + dx]
        else:                                                          # mask too large to move: mirrored content
            src = src[::-1, ::-1]
        out = a.copy()
        out[m] = src[m]
        return out, m

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        a = float_to_uint8(image)
        variant = self.variant
        if variant == "patch_scar":
            variant = "patch" if rng.random() < 0.5 else "scar"
        if variant == "patch":
            out, m = self._patch(a, rng)
        elif variant == "scar":
            out, m = self._scar(a, rng)
        else:
            out, m = self._mask_shaped(a, np.asarray(mask) > 0.5, rng)
        # pasted pixels identical to the original (flat regions) stay in the mask: they were replaced
        return uint8_to_float(out), m.astype(np.float32)
