#!/usr/bin/env python
"""A local web page to place defects by hand: paint a mask on a normal image, pick a defect type, get pairs.

    python scripts/studio.py --run outputs/demo/logs/fast/brick+scratch          # then open http://127.0.0.1:7860

The command lives in ``ldm/studio/cli.py`` (``--help`` for every flag), the page in ``ldm/studio/``.
"""
import sys

from ldm.studio.cli import cli

if __name__ == "__main__":
    sys.exit(cli())
