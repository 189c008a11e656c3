#!/usr/bin/env python
"""Compare anomaly synthesizers by the segmenter they produce: same segmenter, same budget, same test set.

    python scripts/compare_synthesizers.py --dataset_root /data/mvtec_ad --layout mvtec \\
        --categories bottle,hazelnut --fast_dir generated/fast --out outputs/compare

The protocol lives in ``ldm/segmentation/compare.py`` (``--help`` for every flag).
"""
import sys

from ldm.segmentation.compare import cli

if __name__ == "__main__":
    sys.exit(cli())
