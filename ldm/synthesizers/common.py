"""Baselines (DRAEM, CutPaste, normal-only) through the shared pairs writer (``ldm.pairs``).

Same on-disk layout, manifest, per-pair records and resumability as ``generate_with_mask.py``: pair n
depends only on ``(seed, category, defect, n)``, so a killed run restarted with the same arguments
skips finished pairs and writes byte-identical remaining ones.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Callable, Optional

import numpy as np
from tqdm.auto import tqdm

from ldm.data.layouts import SPLIT_MODES, index_category
from ldm.pairs import PairWriter, check_manifest, derive_seed, synth_rng
from ldm.quality.folders import folder_quality
from ldm.synthesizers import METHODS
from ldm.synthesizers.cutpaste import VARIANTS
from utils.cli import ArgumentParser, run_cli
from utils.errors import UserError
from utils.metrics import jsonable

__all__ = ["MASK_SOURCES", "synthesize_baseline", "synthesize_pairs"]

Synthesizer = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


def synthesize_pairs(synth: Synthesizer, inputs, writer: PairWriter, n_samples: Optional[int] = None,
                     seed: int = 0, progress: bool = True, desc: str = "synthesize") -> dict:
    """Write pairs ``0..n_samples-1`` (default ``len(inputs)``), skipping complete ones.

    ``inputs[n]`` gives ``{"image", "mask"}`` (``ldm.data.generation_inputs.GenerationInputs``).  Returns
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

MASK_SOURCES = ("perlin", "real", "augmented")  # the baselines' mask sources (no mask model)


def synthesize_baseline(method: str, out, normal_images, category: str, defect: str, n_samples: int,
                        mask_source: str = "perlin", size=256, seed: int = 0, layout: str = "mvtec",
                        data_root=None, split: str = "third", progress: bool = True, **synth_kwargs) -> dict:
    """Write ``n_samples`` pairs of ``method`` to ``<out>/<category>/<defect>/`` (resumable).

    The normal image and the mask of pair n depend only on ``(seed, category, defect, n)``, not on
    the method: every baseline run with the same arguments sees the same inputs.
    """
    from ldm.data.generation_inputs import GenerationInputs
    from ldm.data.mask_source import mask_source as make_masks
    from ldm.synthesizers import get_synthesizer

    s = derive_seed(seed, category, defect)
    synth = get_synthesizer(method, size=size, **synth_kwargs)
    writer = PairWriter(out, category, defect)
    check_manifest(writer.root, {"method": method, "mask_source": mask_source, "size": size, "seed": seed,
                                 "split": split, "synth_kwargs": {k: str(v) for k, v in synth_kwargs.items()},
                                 "normal_images": [str(p) for p in normal_images]})
    masks = make_masks(mask_source, size, s, layout=layout, split=split, data_root=data_root, category=category,
                       defect=defect, kinds=MASK_SOURCES)
    inputs = GenerationInputs(normal_images, masks, size=size, seed=s, length=n_samples)
    stats = synthesize_pairs(synth, inputs, writer, n_samples, seed=s, progress=progress,
                             desc=f"{method} {category}/{defect}")
    stats["mask_source"] = mask_source if getattr(synth, "uses_mask_source", True) else f"own ({method})"
    return stats


# ----------------------------------------------------------------------------- synthesize_baseline.py

CLI_HELP = """Write baseline image–mask pairs (DRAEM, CutPaste, normal-only) in the generate_with_mask.py layout.

Output: ``<out>/<category>/<defect>/{image,mask,image-mask-ori}/<n>.png``.  Normal images are the
category's training normals; masks come from ``--mask_source``: ``perlin`` (DRAEM's own), or
``real`` / ``augmented`` = masks of the *generator side* of the per-defect split (never test masks).
CutPaste's patch/scar variants make their own box masks.  Re-running resumes: finished pairs are skipped.
"""


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=CLI_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--data_root", required=True, help="dataset root (normal images, and masks for real/augmented)")
    p.add_argument("--layout", default="mvtec", help="dataset layout: mvtec, btad, visa, folder, texture_ad")
    p.add_argument("--category", required=True)
    p.add_argument("--defect", default=None,
                   help="anomaly folder name; with --mask_source real/augmented the defect whose masks are used "
                        "(default: 'perlin' for perlin masks)")
    p.add_argument("--n_samples", type=int, default=500, help="pairs to write (default 500, as FAST)")
    p.add_argument("--mask_source", default="perlin", choices=MASK_SOURCES)
    p.add_argument("--split", default="third", choices=SPLIT_MODES, help="which masks are the generator side")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--texture_dir", default=None, help="DRAEM anomaly sources (e.g. dtd/images); default: "
                                                       "scikit-image's bundled CC0/public-domain photographs")
    p.add_argument("--cutpaste_variant", default="patch_scar", choices=VARIANTS)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quality", action="store_true", help="also print background/saliency/diversity numbers")
    return p


def main(argv=None) -> int:
    """``synthesize_baseline.py``: parse the flags, :func:`synthesize_baseline` one (category, defect), print
    what was written (and, with ``--quality``, the folder's pixel scores)."""
    a = get_parser().parse_args(argv)
    kwargs = {}
    if a.method == "draem" and a.texture_dir:
        kwargs["texture_dir"] = a.texture_dir
    if a.method == "cutpaste":
        kwargs["variant"] = a.cutpaste_variant
    defect = a.defect or ("perlin" if a.mask_source == "perlin" else None)
    if defect is None:
        raise UserError(f"--mask_source {a.mask_source} needs --defect")
    if a.n_samples < 1:
        raise UserError(f"--n_samples must be >= 1, got {a.n_samples}")
    index = index_category(a.layout, a.data_root, a.category)
    stats = synthesize_baseline(a.method, a.out, index.train_good, index.category, defect, a.n_samples,
                                a.mask_source, a.size, a.seed, a.layout, a.data_root, a.split, **kwargs)
    print(f"{a.method}: wrote {stats['written']} pairs, skipped {stats['skipped']} finished ones, in "
          f"{stats['seconds']:.1f} s -> {stats['out']} (masks: {stats['mask_source']})")
    if a.quality:
        print(json.dumps(jsonable(folder_quality(stats["out"])), indent=1))
    return 0


def cli(argv=None) -> int:
    """``scripts/synthesize_baseline.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("synthesize_baseline.py", lambda: main(argv))
