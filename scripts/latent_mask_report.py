#!/usr/bin/env python
"""How much of each defect type's masks survives the pixel → latent mask step (``latent_mask``).

    python scripts/latent_mask_report.py --root data/texture-ad --size 64 --latent 32

The report lives in ``ldm/quality/latent_masks.py`` (``--help`` for every flag and column).
"""
import sys

from ldm.quality.latent_masks import cli

if __name__ == "__main__":
    sys.exit(cli())
