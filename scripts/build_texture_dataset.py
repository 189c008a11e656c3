#!/usr/bin/env python
"""Build the embedded texture-AD dataset (MVTec layout) from scikit-image's CC0 textures."""
from __future__ import annotations

import argparse
import sys

from ldm.data.texture_ad import DEFECT_RENDERERS, FAMILIES, TEXTURES, build_texture_ad  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402

EPILOG = """\
Source images: scikit-image's bundled brick (CC0Textures "Bricks25"), grass ("Grass-01") and
gravel (CC0Textures "Gravel04"), each CC0 1.0 (public domain). The derived dataset is CC0 too;
a LICENSE.txt with this attribution is written into the dataset root. Defects are synthetic.

Deterministic (same arguments -> same bytes) and idempotent (an up-to-date tree is left
untouched). Built in a temp folder and renamed into place.
"""


def _main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="dataset root to create (MVTec layout)")
    p.add_argument("--size", type=int, default=128, help="crop size in pixels (default 128, max 204)")
    p.add_argument("--train-good", type=int, default=40, help="normal training crops per texture (default 40)")
    p.add_argument("--test-good", type=int, default=10, help="normal test crops per texture (default 10)")
    p.add_argument("--per-defect", type=int, default=12, help="anomalous crops per defect type (default 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--textures", nargs="+", default=list(TEXTURES), choices=list(TEXTURES),
                   help="textures to include (default: all)")
    p.add_argument("--family", choices=list(FAMILIES), default="texture-ad",
                   help="defect family: texture-ad (scratch, stain, crack, hole) or wild (fissure, blotch, "
                        "pitting, abrasion: other rendering code, same normal images)")
    p.add_argument("--defects", nargs="+", default=None, choices=list(DEFECT_RENDERERS),
                   help="defect types to include (default: all of --family)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out built differently")
    a = p.parse_args(argv)
    build_texture_ad(a.out, size=a.size, train_good=a.train_good, test_good=a.test_good,
                     per_defect=a.per_defect, seed=a.seed, textures=a.textures,
                     defects=a.defects or list(FAMILIES[a.family]),
                     force=a.force, verbose=True)
    return 0


def main(argv=None) -> int:
    """Entry point: user errors print one line and return 2; bugs keep their traceback."""
    from utils.cli import run_cli

    return run_cli("build_texture_dataset.py", lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
