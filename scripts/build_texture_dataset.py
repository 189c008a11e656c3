#!/usr/bin/env python
"""Build the embedded texture-AD dataset (MVTec layout) from scikit-image's CC0 textures.

    python scripts/build_texture_dataset.py --out data/texture-ad

The builder lives in ``ldm/data/texture_ad.py`` (``--help`` for every flag).
"""
import sys

from ldm.data.texture_ad import cli

if __name__ == "__main__":
    sys.exit(cli())
