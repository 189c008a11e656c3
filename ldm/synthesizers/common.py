"""Baselines (DRAEM, CutPaste, normal-only) through the shared pairs writer (``ldm.pairs``).

Same on-disk layout, manifest, per-pair records and resumability as ``generate_with_mask.py``: pair n
depends only on ``(seed, category, defect, n)``, so a killed run restarted with the same arguments
skips finished pairs and writes byte-identical remaining ones.
"""
from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from ldm.pairs import MANIFEST, SUBDIRS, PairWriter, check_manifest, check_name, derive_seed, synth_rng
from utils.errors import UserError

__all__ = ["MANIFEST", "MASK_SOURCES", "SUBDIRS", "PairWriter", "check_manifest", "check_name", "derive_seed",
           "make_mask_source", "synth_rng", "synthesize_baseline", "synthesize_pairs"]

Synthesizer = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


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
    writer.allow_empty = bool(getattr(synth, "writes_empty_masks", False))
    for n in tqdm(range(n_samples), desc=desc, disable=not progress, leave=False):
        if writer.done(n):
            skipped += 1
            continue
        item = inputs[n]
        image, mask = synth(item["image"], item["mask"], synth_rng(seed, n))
        writer.write(n, image, mask, item["image"], meta={"normal_image": item["normal_path"],
                                                          "mask_origin": item["mask_origin"], "seed": int(seed)})
        written += 1
    writer.write_index(n_samples)
    return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - t0, "out": str(writer.root)}


# ----------------------------------------------------------------------------- one (category, defect) run

MASK_SOURCES = ("perlin", "real", "augmented")


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
