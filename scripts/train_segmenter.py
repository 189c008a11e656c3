#!/usr/bin/env python
"""Train a segmenter on a generated-pairs folder (+ normal images 50/50) and test it on real held-out anomalies.

    python scripts/train_segmenter.py --pairs generated/fast --dataset_root /data/mvtec_ad --category bottle \\
        --out outputs/seg/bottle

The command lives in ``ldm/segmentation/train_on_pairs.py`` (``--help`` for every flag).
"""
import sys

from ldm.segmentation.train_on_pairs import cli

if __name__ == "__main__":
    sys.exit(cli())
