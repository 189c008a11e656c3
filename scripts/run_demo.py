#!/usr/bin/env python
"""The embedded demo: the whole FAST pipeline on a CPU, with no downloads (``bash scripts/demo.sh`` sets up
.venv and runs this).

    python scripts/run_demo.py [--quick | --smoke | --full] [--stage] [--grounding] [--ablations] [--out DIR]

The demo lives in ``ldm/demo/``: tiers and flags, the pipeline of stages, the report (``--help`` for every flag).
"""
import sys

from ldm.demo.pipeline import cli

if __name__ == "__main__":
    sys.exit(cli())
