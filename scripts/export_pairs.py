#!/usr/bin/env python
"""Export generated image–mask pairs to the MVTec/anomalib, MMSegmentation 1.x or HF imagefolder layout.

    python scripts/export_pairs.py --pairs generated/fast --format mvtec --out exports/mvtec
    python scripts/export_pairs.py --pairs generated/fast --format hf --out exports/hf

The export lives in ``ldm/export.py`` (the rules of every format; ``--help`` for every flag).
"""
import sys

from ldm.export import cli

if __name__ == "__main__":
    sys.exit(cli())
