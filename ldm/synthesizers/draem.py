"""DRAEM's anomaly simulator (official-code variant) as a pair synthesizer.

Recipe (VitjanZ/DRAEM ``data_loader.py``; see ``docs/method.md`` §5.1, "DRAEM"):

* mask: from the given mask source -- by default DRAEM's own Perlin masks (``ldm.data.masks.PerlinMasks``);
* texture A: a random anomaly-source image resized to the target size, then 3 *distinct* operations
  out of 10 (gamma contrast, brightness mul/add, sharpness, hue/saturation shift, solarize, posterize,
  invert, autocontrast, equalize, rotation ±45°);
* blend: ``I·(1−M) + (1−b)·A·M + b·I·M`` with ``b ~ U[0, 0.8)``.

DRAEM's 50 % "keep normal" draws are not applied here: the segmenter trainer already mixes normal
images 50/50 for every synthesizer alike.  Its optional rotation of the normal image (p = 0.3) is off
by default (``rotate_normal_p``) because the black corners it creates would be a cue only this
synthesizer's images carry.

Anomaly sources: DRAEM uses the Describable Textures Dataset (DTD), which is not available offline.
The default substitute is the set of CC0 / public-domain photographs bundled inside scikit-image
(``skimage/data``; provenance in scikit-image's data-module docstrings), read from disk, no network.
The texture images ``brick``/``grass``/``gravel`` are excluded by default because they are the
embedded texture-AD dataset's own categories.  Users with DTD pass ``texture_dir`` (searched
recursively for images, e.g. ``dtd/images``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from ldm.data.io import IMAGE_EXTENSIONS, load_image_uint8, natural_key, parse_size
from utils.images import float_to_uint8, uint8_to_float

# scikit-image bundled files and the licence stated in their docstrings.
SKIMAGE_SOURCES = {
    "astronaut.png": "public domain (NASA)",
    "camera.png": "CC0 (Lav Varshney)",
    "coffee.png": "CC0 (Rachel Michetti)",
    "chelsea.png": "CC0 (Stefan van der Walt)",
    "rocket.jpg": "public domain (SpaceX)",
    "hubble_deep_field.jpg": "public domain (NASA)",
    "retina.jpg": "CC0 1.0",
    "cell.png": "CC0",
    "horse.png": "CC0 (Andreas Preuss)",
    "text.png": "public domain",
    "microaneurysms.png": "CC0 (Andreas Maier)",
}


def skimage_source_paths(names: Sequence[str] = tuple(SKIMAGE_SOURCES)) -> list[Path]:
    """Paths of the bundled scikit-image anomaly-source images that exist in this installation."""
    import skimage.data

    folder = Path(skimage.data.__file__).parent
    paths = [folder / n for n in names if (folder / n).is_file()]
    if not paths:
        raise FileNotFoundError(f"no scikit-image anomaly-source images found in {folder}; pass --texture_dir")
    return paths


def texture_paths(texture_dir=None) -> list[Path]:
    """Anomaly-source images: every image under ``texture_dir`` (recursive) or the scikit-image set."""
    if texture_dir is None:
        return skimage_source_paths()
    root = Path(texture_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--texture_dir not found: {root}")
    paths = sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                    and not p.name.startswith(".")), key=lambda p: natural_key(str(p.relative_to(root))))
    if not paths:
        raise ValueError(f"--texture_dir {root}: no images found")
    return paths


# ----------------------------------------------------------------------------- the 10 augmenters (uint8 RGB)

def _gamma(a, rng):
    g = rng.uniform(0.5, 2.0, size=3)                       # per channel
    return np.clip(255.0 * (a / 255.0) ** g + 0.5, 0, 255).astype(np.uint8)


def _brightness(a, rng):
    ycc = np.asarray(Image.fromarray(a).convert("YCbCr")).astype(np.float32)
    ycc[..., 0] = ycc[..., 0] * rng.uniform(0.8, 1.2) + rng.uniform(-30, 30)
    return np.asarray(Image.fromarray(np.clip(ycc + 0.5, 0, 255).astype(np.uint8), "YCbCr").convert("RGB"))


def _sharpness(a, rng):
    return np.asarray(ImageEnhance.Sharpness(Image.fromarray(a)).enhance(rng.uniform(0.0, 2.0)))


def _hue_saturation(a, rng):
    hsv = np.asarray(Image.fromarray(a).convert("HSV")).astype(np.int32)
    dh, ds = rng.integers(-50, 51, size=2)
    hsv[..., 0] = (hsv[..., 0] + int(round(dh * 255 / 180))) % 256   # OpenCV hue units → PIL's 0..255
    hsv[..., 1] = np.clip(hsv[..., 1] + ds, 0, 255)
    return np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))


def _solarize(a, rng):
    if rng.random() < 0.5:
        return a
    thr = rng.integers(32, 129)
    return np.where(a >= thr, 255 - a, a).astype(np.uint8)


def _posterize(a, rng):
    return np.asarray(ImageOps.posterize(Image.fromarray(a), int(rng.integers(1, 9))))


def _invert(a, rng):
    return (255 - a).astype(np.uint8)


def _autocontrast(a, rng):
    return np.asarray(ImageOps.autocontrast(Image.fromarray(a), cutoff=float(rng.uniform(0, 20))))


def _equalize(a, rng):
    return np.asarray(ImageOps.equalize(Image.fromarray(a)))


def _rotate(a, rng):
    return np.asarray(Image.fromarray(a).rotate(float(rng.uniform(-45, 45)), resample=Image.BILINEAR, fillcolor=(0, 0, 0)))


AUGMENTERS = {
    "gamma": _gamma, "brightness": _brightness, "sharpness": _sharpness, "hue_saturation": _hue_saturation,
    "solarize": _solarize, "posterize": _posterize, "invert": _invert, "autocontrast": _autocontrast,
    "equalize": _equalize, "rotate": _rotate,
}


def augment_texture(texture: np.ndarray, rng: np.random.Generator, n_ops: int = 3) -> np.ndarray:
    """Apply ``n_ops`` distinct augmenters, in random order, to an H×W×3 uint8 texture."""
    names = list(AUGMENTERS)
    out = np.ascontiguousarray(texture)
    for i in rng.choice(len(names), size=n_ops, replace=False):
        out = np.ascontiguousarray(AUGMENTERS[names[int(i)]](out, rng))
    return out


def draem_blend(image: np.ndarray, texture: np.ndarray, mask: np.ndarray, b: float) -> np.ndarray:
    """``I·(1−M) + (1−b)·A·M + b·I·M`` (all H×W×3 in the same value range, M in {0, 1})."""
    m = np.asarray(mask, np.float32)[..., None]
    return image * (1.0 - m) + (1.0 - b) * texture * m + b * image * m


class DraemSynthesizer:
    """``(image [-1,1], mask {0,1}, rng) -> (anomalous image, mask)`` with DRAEM's texture blend."""

    name = "draem"
    uses_mask_source = True

    def __init__(self, size=256, texture_dir=None, n_ops: int = 3, beta_range=(0.0, 0.8),
                 rotate_normal_p: float = 0.0):
        self.size = parse_size(size)
        self.paths = texture_paths(texture_dir)
        self.n_ops, self.beta_range, self.rotate_normal_p = int(n_ops), tuple(beta_range), float(rotate_normal_p)
        self._cache: dict[tuple, np.ndarray] = {}

    def _texture(self, i: int, hw: tuple[int, int]) -> np.ndarray:
        key = (i, hw)
        if key not in self._cache:
            self._cache[key] = load_image_uint8(self.paths[i], hw)       # DRAEM resizes the whole image
        return self._cache[key]

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        image = np.asarray(image, np.float32)
        m = (np.asarray(mask) > 0.5).astype(np.float32)
        hw = image.shape[:2]
        if self.rotate_normal_p > 0 and rng.random() < self.rotate_normal_p:
            u8 = float_to_uint8(image)
            u8 = np.asarray(Image.fromarray(u8).rotate(float(rng.uniform(-90, 90)), resample=Image.BILINEAR))
            image = uint8_to_float(u8)
        tex = augment_texture(self._texture(int(rng.integers(len(self.paths))), hw), rng, self.n_ops)
        tex = uint8_to_float(tex)
        b = float(rng.uniform(*self.beta_range))
        out = draem_blend(image, tex, m, b)
        return np.clip(out, -1.0, 1.0).astype(np.float32), m
