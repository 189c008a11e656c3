#!/usr/bin/env python
"""Sample masks from a mask-TI run and report their diversity against the real masks.

    python scripts/mask_ti_report.py --pt_path logs/grounding_masks/brick+scratch/checkpoints \\
        --name brick+scratch --mask_path data/texture-ad/brick/ground_truth/scratch/ --n 64 --size 64 \\
        --out outputs/mask_ti/brick+scratch

The report lives in ``ldm/quality/mask_diversity.py`` (``--help`` for every flag).
"""
import sys

from ldm.quality.mask_diversity import cli

if __name__ == "__main__":
    sys.exit(cli())
