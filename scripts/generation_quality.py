#!/usr/bin/env python
"""Inception Score and IC-LPIPS of generated anomaly images, from local weight files only.

    python scripts/generation_quality.py --pairs generated/fast/brick/crack --real data/texture-ad/brick/test/crack \\
        --inception_weights <inception_v3 .pth> --vgg_weights <vgg16 .pth> --lin_weights <lpips v0.1 vgg.pth>

The command lives in ``ldm/quality/generative_folders.py`` (``--help`` for every flag), the arithmetic in
``ldm/quality/generative.py``.
"""
import sys

from ldm.quality.generative_folders import cli

if __name__ == "__main__":
    sys.exit(cli())
