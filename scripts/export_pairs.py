#!/usr/bin/env python
"""Export generated image–mask pairs to the MVTec/anomalib, MMSegmentation 1.x or HF imagefolder layout.

    python scripts/export_pairs.py --pairs generated/fast --format mvtec --out exports/mvtec
    python scripts/export_pairs.py --pairs generated/fast/hazelnut/crack --format mmseg --out exports/mmseg \
        --val_fraction 0.2 --seed 0 --min_score 0.05 --keep_top 300
    python scripts/export_pairs.py --pairs generated/fast --format hf --out exports/hf

``--pairs`` is a pairs root (``<category>/<defect>/{image,mask,image-mask-ori}/``), one category folder
or one category/defect folder.  The train/validation split is by source normal image (from
``pairs.csv``; without it each pair is its own source), seeded; ``--min_score``/``--keep_top`` use
``pairs.csv``'s ``score`` column.  The export is built in a temporary sibling folder and renamed into
place, and a non-empty ``--out`` is refused without ``--overwrite``.  See ``ldm/export.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from ldm.export import FORMATS, ExportOptions, export_pairs  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402


def _names(text):
    return [s for s in text.split(",") if s] if text else None


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="pairs folder: root, <category> or <category>/<defect>")
    p.add_argument("--format", required=True, choices=FORMATS, help="output layout")
    p.add_argument("--out", required=True, help="output folder (refused when non-empty, unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out (only once the export is complete)")
    p.add_argument("--val_fraction", type=float, default=0.2,
                   help="fraction of source normal images (per category) held out: val (mmseg), validation (hf), "
                        "test/good (mvtec); 0 = none (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split (default 0)")
    p.add_argument("--min_score", type=float, default=None, help="keep pairs whose pairs.csv score is >= this")
    p.add_argument("--keep_top", type=int, default=None, help="keep the N best-scoring pairs per category/defect")
    p.add_argument("--normal_dir", default=None,
                   help="more normal images: <dir>/<category>/train/good/, <dir>/<category>/, "
                        "or <dir>/ itself for one category")
    p.add_argument("--no_normals", action="store_true",
                   help="mmseg/hf: leave normal images (all-zero masks) out; mvtec always has train/good")
    p.add_argument("--categories", default=None, help="comma-separated categories to export (default: all)")
    p.add_argument("--defects", default=None, help="comma-separated defect types to export (default: all)")
    return p


def main(argv=None) -> int:
    a = get_parser().parse_args(argv)
    opt = ExportOptions(fmt=a.format, val_fraction=a.val_fraction, seed=a.seed, min_score=a.min_score,
                        keep_top=a.keep_top, normal_dir=Path(a.normal_dir) if a.normal_dir else None,
                        include_normals=not a.no_normals, categories=_names(a.categories), defects=_names(a.defects))
    manifest = export_pairs(a.pairs, a.out, opt, overwrite=a.overwrite)
    c = manifest["counts"]
    print(f"[export] {a.format}: {c['kept']} pairs kept, {c['dropped']} dropped, "
          f"{c['normal_images']} normal images -> {a.out}")
    print(f"[export] splits: {json.dumps(manifest['splits'], sort_keys=True)}")
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli("export_pairs.py", main))
