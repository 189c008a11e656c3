"""How much of each defect type's masks survives the pixel → latent mask step (``latent_mask``).

    python scripts/latent_mask_report.py --root data/texture-ad --size 64 --latent 16

Per defect type: masks, how many become all-zero latent masks with the old ``> 0.5`` rule, with the
official ``>= 0.5`` rule, and after ``latent_mask``'s keep-alive rule (must be 0), and the latent
area kept relative to the pixel area (1.0 = the latent mask covers exactly the mask's share). Thin
masks (scratches, cracks) are the ones at risk: check them before training at a small latent size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from ldm.data.io import load_mask
from ldm.models.diffusion.latent_mask import latent_mask
from utils.cli import ArgumentParser, run_cli
from utils.errors import InputNotFound


def report(root: Path, size: int, latent: int) -> list[dict]:
    """Per defect type of ``root``'s ``<category>/ground_truth/<defect>/*.png``: masks, all-zero latent masks under
    ``> 0.5``, ``>= 0.5`` and ``latent_mask``'s keep-alive rule, latent cells kept by each rule and the pixel
    area in latent cells (the mask's mean over each ``size/latent`` block, summed)."""
    files = sorted(Path(root).glob("*/ground_truth/*/*.png"))
    if not files:
        raise InputNotFound(f"--root {root}: no <category>/ground_truth/<defect>/*.png masks")
    rows: dict = {}
    for p in files:
        m = torch.from_numpy(load_mask(p, size))[None, None]
        soft = F.interpolate(m, size=(latent, latent), mode="bilinear", align_corners=False)
        area = float(F.adaptive_avg_pool2d(m, (latent, latent)).sum())
        r = rows.setdefault(p.parent.name, {"defect": p.parent.name, "masks": 0, "empty_gt": 0, "empty_ge": 0,
                                            "empty_final": 0, "cells_gt": 0.0, "cells_ge": 0.0, "area": 0.0})
        r["masks"] += 1
        r["empty_gt"] += int((soft > 0.5).sum() == 0)
        r["empty_ge"] += int((soft >= 0.5).sum() == 0)
        r["empty_final"] += int(latent_mask(m, (latent, latent)).sum() == 0)
        r["cells_gt"] += float((soft > 0.5).sum())
        r["cells_ge"] += float((soft >= 0.5).sum())
        r["area"] += area
    return list(rows.values())


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", required=True, help="dataset root (<category>/ground_truth/<defect>/*.png)")
    p.add_argument("--size", type=int, default=256, help="image size the masks are resized to")
    p.add_argument("--latent", type=int, default=32, help="latent size (image size / first-stage factor)")
    return p


def main(argv=None) -> int:
    """``latent_mask_report.py``: print one row per defect type of :func:`report`."""
    a = get_parser().parse_args(argv)
    print(f"{a.size} px masks -> {a.latent}x{a.latent} latent")
    print(f"{'defect':12s} {'masks':>5s} {'empty >':>8s} {'empty >=':>9s} {'empty now':>9s} "
          f"{'area kept >':>12s} {'area kept >=':>13s}")
    for r in report(Path(a.root), a.size, a.latent):
        print(f"{r['defect']:12s} {r['masks']:5d} {r['empty_gt']:8d} {r['empty_ge']:9d} {r['empty_final']:9d} "
              f"{r['cells_gt'] / r['area']:12.2f} {r['cells_ge'] / r['area']:13.2f}")
    return 0



def cli(argv=None) -> int:
    """``scripts/latent_mask_report.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("latent_mask_report.py", lambda: main(argv))
