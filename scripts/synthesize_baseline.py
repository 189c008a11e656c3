#!/usr/bin/env python
"""Write baseline image–mask pairs (DRAEM, CutPaste, normal-only) in the generate_with_mask.py layout.

Output: ``<out>/<category>/<defect>/{image,mask,image-mask-ori}/<n>.png``.  Normal images are the
category's training normals; masks come from ``--mask_source``: ``perlin`` (DRAEM's own), or
``real`` / ``augmented`` = masks of the *generator side* of the per-defect split (never test masks).
CutPaste's patch/scar variants make their own box masks.  Re-running resumes: finished pairs are skipped.
"""
from __future__ import annotations

import argparse
import json
import sys

from ldm.data.layouts import SPLIT_MODES, index_category  # noqa: E402
from ldm.synthesizers import METHODS  # noqa: E402
from ldm.synthesizers.common import MASK_SOURCES, synthesize_baseline  # noqa: E402
from ldm.synthesizers.cutpaste import VARIANTS  # noqa: E402
from ldm.quality.pixels import folder_quality  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.metrics import jsonable  # noqa: E402


def _main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    a = p.parse_args(argv)
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



def main(argv=None) -> int:
    """Entry point: user errors print one line and return 2; bugs keep their traceback."""
    from utils.cli import run_cli

    return run_cli("synthesize_baseline.py", lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
