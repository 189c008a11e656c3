"""The shared pairs writer: same on-disk layout as ``generate_with_mask.py``, atomic and resumable.

Layout: ``<out>/<sample_name>/<anomaly_name>/{image,mask,image-mask-ori}/<n>.png`` with ``image`` an
RGB PNG, ``mask`` a 0/255 L-mode PNG and ``image-mask-ori`` the strip generated | mask | original.
Why resumable: pair n depends only on ``(seed, n)`` (inputs, mask and synthesizer randomness are
all seeded per index), so a killed run restarted with the same arguments skips finished pairs and
writes byte-identical remaining ones.  Each file is written atomically; the strip is written last
and marks a pair complete.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from ldm.data.io import save_png_atomic
from utils.errors import UserError

SUBDIRS = ("image", "mask", "image-mask-ori")
Synthesizer = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


def check_name(name: str, what: str) -> str:
    """Sample/anomaly names become folder names: refuse separators and empties with a one-line error."""
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise UserError(f"invalid {what} name {name!r} (must be a plain folder name)")
    return name


class PairWriter:
    """Writes pair n of one (sample, anomaly) folder; ``done(n)`` tells a resumed run what to skip."""

    def __init__(self, out, sample_name: str, anomaly_name: str):
        self.root = Path(out) / check_name(sample_name, "sample") / check_name(anomaly_name, "anomaly")
        self.dirs = {k: self.root / k for k in SUBDIRS}

    def paths(self, n: int) -> dict:
        return {k: d / f"{int(n)}.png" for k, d in self.dirs.items()}

    def done(self, n: int) -> bool:
        return all(p.is_file() for p in self.paths(n).values())

    def write(self, n: int, image: np.ndarray, mask: np.ndarray, original: np.ndarray) -> None:
        """``image``/``original`` H×W×3 float in [-1, 1]; ``mask`` H×W {0, 1}.  Strip written last."""
        image = np.clip(np.asarray(image, np.float32), -1.0, 1.0)
        original = np.clip(np.asarray(original, np.float32), -1.0, 1.0)
        m = np.asarray(mask) > 0.5
        if image.shape != original.shape or image.ndim != 3 or m.shape != image.shape[:2]:
            raise UserError(f"pair {n} for {self.root}: image {image.shape}, mask {m.shape} and original "
                             f"{original.shape} must agree (H×W×3, H×W)")
        p = self.paths(n)
        save_png_atomic(image, p["image"])
        save_png_atomic(m.astype(np.uint8) * 255, p["mask"])
        mask_rgb = np.repeat(m[..., None].astype(np.float32) * 2.0 - 1.0, 3, axis=2)
        save_png_atomic(np.concatenate([image, mask_rgb, original], axis=1), p["image-mask-ori"])


def synth_rng(seed: int, n: int) -> np.random.Generator:
    """The synthesizer's own generator for pair n (a stream distinct from inputs and mask sources)."""
    return np.random.default_rng([int(seed), 1000, int(n)])


def synthesize_pairs(synth: Synthesizer, inputs, writer: PairWriter, n_samples: Optional[int] = None,
                     seed: int = 0, progress: bool = True, desc: str = "synthesize") -> dict:
    """Write pairs ``0..n_samples-1`` (default ``len(inputs)``), skipping complete ones.

    ``inputs[n]`` gives ``{"image", "mask"}`` (``ldm.data.generation.GenerationInputs``).  Returns
    ``{"written", "skipped", "seconds", "out"}``.
    """
    n_samples = len(inputs) if n_samples is None else int(n_samples)
    if n_samples > len(inputs):
        raise UserError(f"--n_samples {n_samples} exceeds the {len(inputs)} generation inputs")
    t0 = time.perf_counter()
    written = skipped = 0
    for n in tqdm(range(n_samples), desc=desc, disable=not progress, leave=False):
        if writer.done(n):
            skipped += 1
            continue
        item = inputs[n]
        image, mask = synth(item["image"], item["mask"], synth_rng(seed, n))
        writer.write(n, image, mask, item["image"])
        written += 1
    return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - t0, "out": str(writer.root)}


# ----------------------------------------------------------------------------- one (category, defect) run

MASK_SOURCES = ("perlin", "real", "augmented")


def derive_seed(seed: int, *names: str) -> int:
    """A stable per-(category, defect) seed, so different defect folders get different pairs."""
    import hashlib

    h = hashlib.sha256("/".join([str(int(seed)), *names]).encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def make_mask_source(kind: str, size, seed: int, layout: str = "mvtec", root=None, category: str | None = None,
                     defect: str | None = None, split: str = "third"):
    """``perlin`` (DRAEM), ``real`` or ``augmented`` (generator side of ``split`` for that defect only,
    so test-mask shapes never reach the training pairs)."""
    from ldm.data.masks import AugmentedMasks, PerlinMasks, RealMasks

    if kind == "perlin":
        return PerlinMasks(size=size, seed=seed)
    if kind in ("real", "augmented"):
        if root is None or category is None or defect is None:
            raise UserError(f"--mask_source {kind} needs --data_root, --category and --defect")
        cls = RealMasks if kind == "real" else AugmentedMasks
        return cls(size=size, seed=seed, root=root, category=category, defect=defect, layout=layout,
                   anomaly_split=split)
    raise UserError(f"--mask_source must be one of {', '.join(MASK_SOURCES)}, got {kind!r}")


MANIFEST = "synthesis.json"


def check_manifest(folder: Path, settings: dict) -> None:
    """Resuming is only valid with the same settings: record them on first use, refuse a mismatch.

    Without this a rerun with, say, another mask source would silently keep the old pairs.
    """
    import json

    from utils.atomic import write_text_atomic

    path = Path(folder) / MANIFEST
    text = json.dumps(settings, sort_keys=True, indent=1) + "\n"
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path}: unreadable synthesis manifest; delete the folder to regenerate") from None
        if old != json.loads(text):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != json.loads(text).get(k))
            raise UserError(f"{path.parent} was written with other settings ({', '.join(diff)} differ); "
                             "use another --out or delete that folder")
        return
    write_text_atomic(path, text)


def synthesize_baseline(method: str, out, normal_images, category: str, defect: str, n_samples: int,
                        mask_source: str = "perlin", size=256, seed: int = 0, layout: str = "mvtec",
                        data_root=None, split: str = "third", progress: bool = True, **synth_kwargs) -> dict:
    """Write ``n_samples`` pairs of ``method`` to ``<out>/<category>/<defect>/`` (resumable).

    The normal image and the mask of pair n depend only on ``(seed, category, defect, n)``, not on
    the method: every baseline run with the same arguments sees the same inputs.
    """
    from ldm.data.generation import GenerationInputs
    from ldm.synthesizers import get_synthesizer

    s = derive_seed(seed, category, defect)
    synth = get_synthesizer(method, size=size, **synth_kwargs)
    writer = PairWriter(out, category, defect)
    check_manifest(writer.root, {"method": method, "mask_source": mask_source, "size": size, "seed": seed,
                                 "split": split, "synth_kwargs": {k: str(v) for k, v in synth_kwargs.items()},
                                 "normal_images": [str(p) for p in normal_images]})
    masks = make_mask_source(mask_source, size, s, layout, data_root, category, defect, split)
    inputs = GenerationInputs(normal_images, masks, size=size, seed=s, length=n_samples)
    stats = synthesize_pairs(synth, inputs, writer, n_samples, seed=s, progress=progress,
                             desc=f"{method} {category}/{defect}")
    stats["mask_source"] = mask_source if getattr(synth, "uses_mask_source", True) else f"own ({method})"
    return stats
