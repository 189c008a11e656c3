#!/usr/bin/env python
"""Train one FAST model per (category, defect type) of a dataset: a loop of ``main.py`` runs.

    python scripts/train_all.py --config configs/fast/mvtec.yaml --dataset /data/mvtec_ad \\
        --ckpt models/ldm/text2img-large/model.ckpt --gpus 0, [--categories bottle,cable] [key=value ...]

The loop (init words, resuming, config overrides) lives in ``ldm/train_all.py`` (``--help`` for every flag).
"""
import sys

from ldm.train_all import cli

if __name__ == "__main__":
    sys.exit(cli())
