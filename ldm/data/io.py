"""Reading images and masks the same way for every layout, and writing PNGs atomically.

Image rule: any PIL-readable file is converted to RGB (MVTec's grid/screw/zipper and the texture
set are greyscale), resized bicubic, and scaled to float32 in [-1, 1] (CompVis convention).

Mask rule (one rule that is right for MVTec 0/255, BTAD 0/255 and VisA class-id masks):
the mask is reduced to one channel (the max over colour channels; palette images keep their raw
indices), then

* if its maximum exceeds half of full scale (127 for 8-bit, 32767 for 16-bit), it is an
  intensity mask and a pixel is foreground when ``value > full_scale / 2`` -- for 0/255 masks this
  equals ``value / 255 > 0.5`` and it also cleans JPEG noise and anti-aliased edges;
* otherwise it is a class-id mask (VisA stores ids 1..K) and a pixel is foreground when
  ``value != 0``.

The binary mask is then resized by the one mask-resizing rule (``utils.mask_resize``: area coverage
``>= 0.5``, with structures thinner than the new pixel kept as a continuous line), giving float32
{0, 1}.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.errors import InputNotFound, UserError
from utils.images import float_to_uint8, uint8_to_float
from utils.mask_resize import resize_binary_masks

__all__ = [
    "IMAGE_EXTENSIONS",
    "natural_key",
    "to_uint8",
    "is_image_file",
    "list_image_files",
    "parse_size",
    "image_size",
    "read_pil",
    "load_image",
    "load_image_uint8",
    "load_mask",
    "binarize_mask_array",
    "resize_mask",
    "save_png_atomic",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

SizeLike = Union[int, Sequence[int], None]

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: Union[str, os.PathLike]) -> tuple:
    """Sort key: digit runs compare as numbers, the rest as case-folded text.

    ``2.png`` < ``10.png``; ``000.png`` < ``001.png``; names without digits sort lexically; mixed
    names never raise (every chunk is a ``(kind, number, text)`` triple of comparable types). The
    full name is the last element so that ``7`` and ``007`` still have a total order.
    """
    s = os.fspath(name)
    s = os.path.basename(s) if isinstance(name, Path) else s
    chunks = []
    for i, part in enumerate(_DIGITS.split(s)):
        if i % 2:  # digit run
            chunks.append((0, int(part), ""))
        elif part:
            chunks.append((1, 0, part.casefold()))
    return (tuple(chunks), s)


def is_image_file(path: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> bool:
    """True for a visible regular file whose suffix (any case) is an image extension."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in extensions


def list_image_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files of ``folder`` (not recursive) in natural order; other files are ignored."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputNotFound(f"folder not found: {folder}")
    exts = tuple(e.lower() for e in extensions)
    return sorted((p for p in folder.iterdir() if is_image_file(p, exts)), key=lambda p: natural_key(p.name))


def parse_size(size: SizeLike) -> tuple[int, int] | None:
    """``None`` → None; ``256`` → (256, 256); ``(h, w)`` → (h, w). Returned as (H, W)."""
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        if size <= 0:
            raise UserError(f"size must be positive, got {size}")
        return int(size), int(size)
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise UserError(f"size must be an int or an (H, W) pair, got {size!r}") from None
    if h <= 0 or w <= 0:
        raise UserError(f"size must be positive, got {size!r}")
    return h, w


def read_pil(path: Union[str, os.PathLike]) -> Image.Image:
    """Open and fully decode an image, turning every failure into a one-line error naming it."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None


def image_size(path: Union[str, os.PathLike]) -> tuple[int, int]:
    """(H, W) from the file header only (cheap); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputNotFound(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f"cannot read image {path}: {e}") from None
    return h, w


def _to_rgb_uint8(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float64)
        full = 65535.0 if a.max(initial=0) > 255 else 255.0
        a = np.clip(a / full * 255.0 + 0.5, 0, 255).astype(np.uint8)
        im = Image.fromarray(a)
    return im.convert("RGB")


def load_image_uint8(path: Union[str, os.PathLike], size: SizeLike = None) -> np.ndarray:
    """RGB uint8 H×W×3, resized bicubic when ``size`` is given."""
    im = _to_rgb_uint8(read_pil(path))
    hw = parse_size(size)
    if hw is not None and (im.height, im.width) != hw:
        im = im.resize((hw[1], hw[0]), Image.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def load_image(path: Union[str, os.PathLike], size: SizeLike = None) -> np.ndarray:
    """float32 H×W×3 in [-1, 1] (RGB, bicubic resize to ``size``; ``None`` keeps the file's size)."""
    return uint8_to_float(load_image_uint8(path, size))


def binarize_mask_array(a: np.ndarray) -> np.ndarray:
    """Apply the module's mask rule to a raw 2-D or 3-D array; returns bool H×W."""
    a = np.asarray(a)
    if a.ndim == 3:
        a = a[..., :3].max(axis=2) if a.shape[2] >= 3 else a[..., 0]
    if a.dtype == bool:
        return a.copy()
    a = a.astype(np.float64)
    peak = a.max(initial=0.0)
    full = 65535.0 if peak > 255 else 255.0
    if a.dtype.kind == "f" and peak <= 1.0 and a.min(initial=0.0) >= 0.0:
        full = 1.0  # float masks in [0, 1]
    if peak > full / 2:
        return a > full / 2
    return a != 0


def resize_mask(mask: np.ndarray, size: SizeLike) -> np.ndarray:
    """Binarise an H×W mask (``> 0.5``) and bring it to ``size`` by ``utils.mask_resize``'s rule (area
    coverage, thin structures kept continuous) → float32 {0, 1}."""
    hw = parse_size(size)
    m = (np.asarray(mask) > 0.5).astype(np.float32)
    if hw is None or m.shape == hw:
        return m
    out = resize_binary_masks(torch.from_numpy(np.ascontiguousarray(m))[None, None], hw)
    return out[0, 0].numpy().astype(np.float32)


def load_mask(path: Union[str, os.PathLike], size: SizeLike = None) -> np.ndarray:
    """float32 H×W in {0, 1}; see the module docstring for the binarisation rule."""
    im = read_pil(path)
    if im.mode == "P":
        raw = np.asarray(im)  # palette indices: VisA-style ids, 0 = background
    elif im.mode in ("RGBA", "LA", "PA"):
        raw = np.asarray(im.convert("RGB"))
    elif im.mode == "1":
        raw = np.asarray(im, dtype=bool)
    elif im.mode in ("CMYK", "YCbCr", "HSV", "LAB"):
        raw = np.asarray(im.convert("L"))
    else:
        raw = np.asarray(im)
    return resize_mask(binarize_mask_array(raw), size)


def to_uint8(image: np.ndarray, path="array") -> np.ndarray:
    """The exact pixels a PNG of ``image`` holds: uint8 as is; bool → 0/255; float in [-1, 1]
    (HWC images) or {0, 1} (2-D masks) scaled and rounded."""
    a = np.asarray(image)
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "f":
        if a.ndim == 2:
            return np.clip(a * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return float_to_uint8(a)
    if a.dtype != np.uint8:
        raise UserError(f"cannot save array of dtype {a.dtype} as PNG: {path}")
    return a


def save_png_atomic(image: Union[np.ndarray, Image.Image], path: Union[str, os.PathLike]) -> Path:
    """Write a PNG through a temp file in the same folder and ``os.replace``; never half a file.

    Arrays: uint8 as is; bool → 0/255; float in [-1, 1] (HWC images, CompVis convention) or
    {0, 1} masks (2-D float) are scaled to uint8. The output has no timestamp, so equal pixels give
    equal bytes.
    """
    path = Path(path)
    if isinstance(image, Image.Image):
        im = image
    else:
        a = to_uint8(image, path)
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.ndim not in (2, 3):
            raise UserError(f"cannot save array of shape {a.shape} as PNG: {path}")
        im = Image.fromarray(a)
    from utils.images import save_png

    save_png(im, path)
    return path
