#!/usr/bin/env python
"""Write synthetic image–mask pairs with a trained FAST (or STAGE) run — the official command line, extended.

    python generate_with_mask.py --data_root data/texture-ad --sample_name brick --anomaly_name scratch \
        --pt_path logs/fast/brick+scratch/checkpoints --weight_idx 600 \
        --mask_path data/texture-ad/brick/ground_truth/scratch/ --outdir outputs/generated

Output: ``<outdir>/<sample_name>/<anomaly_name>/{image,mask,image-mask-ori,meta}/<n>.png|json`` plus
``pairs.csv``, ``synthesis.json`` (settings), ``provenance.json`` (what the generator trained on) and
``contact_sheet.png``. Pair n's noise depends only on (seed, sample, anomaly, n): the same for any batch size
(another batch size rounds batched convolutions differently: a pixel may move by one grey level),
after an interruption, and on every process of a ``torchrun`` run (indices are split by rank).
Re-running skips finished pairs; a rerun with any pixel-changing setting changed is refused. Pixels
outside the mask are the normal image's, exactly -- except for STAGE in its official mode (no paste;
``paste: true`` in its config restores it), whose background error ``pairs.csv`` reports. The work is
done by ``ldm.generation``; the flags are the fields of ``ldm.generation.GenerationOptions``.
"""
from __future__ import annotations

import argparse
import os
import sys



def get_parser(cls=None) -> argparse.ArgumentParser:
    """One flag per command-line field of ``cls`` (default ``GenerationOptions``), plus ``--adaptive_mask``."""
    from ldm.generation import GenerationOptions
    from utils.options import options_parser

    p = options_parser(cls or GenerationOptions, __doc__)
    p.add_argument("--adaptive_mask", action="store_true", help="accepted for compatibility; ignored (as officially)")
    return p


def options(argv=None, cls=None):
    """The options of ``argv``; this process's rank and the world size come from torchrun's environment."""
    from ldm.generation import GenerationOptions
    from utils.options import options_from_args

    cls = cls or GenerationOptions
    return options_from_args(cls, get_parser(cls).parse_args(argv), rank=int(os.environ.get("RANK", 0)),
                             world_size=int(os.environ.get("WORLD_SIZE", 1)))


def main(argv=None) -> dict:
    from ldm.generation import generate_pairs

    return generate_pairs(options(argv))


def cli() -> int:
    """Console entry point (``pip install -e .`` installs it)."""
    from utils.cli import run_cli

    return run_cli("generate_with_mask.py", lambda: main() and 0)


if __name__ == "__main__":
    sys.exit(cli())
