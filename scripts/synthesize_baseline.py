#!/usr/bin/env python
"""Write baseline image–mask pairs (DRAEM, CutPaste, normal-only) in the generate_with_mask.py layout.

    python scripts/synthesize_baseline.py --method draem --data_root data/texture-ad --layout texture_ad \\
        --category brick --out generated/draem

The command lives in ``ldm/synthesizers/common.py`` (``--help`` for every flag).
"""
import sys

from ldm.synthesizers.common import cli

if __name__ == "__main__":
    sys.exit(cli())
