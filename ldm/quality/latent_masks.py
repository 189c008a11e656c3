"""How much of each defect type's masks survives the pixel → latent mask step (``latent_mask``).

    python scripts/latent_mask_report.py --root data/texture-ad --size 64 --latent 32

Per defect type: masks; how many become all-zero latent masks, and how many fall apart into more
8-connected pieces than the pixel mask has, under the official rule (bilinear resize, ``>= 0.5``) and
under ``latent_mask`` (``utils.mask_resize``: both must be 0); and the latent area relative to the
pixel area under each (1.0 = the latent mask covers exactly the mask's share). Thin masks (scratches,
cracks) are the ones at risk: check them before training at a small latent size.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from ldm.data.io import load_mask
from ldm.models.diffusion.latent_mask import latent_mask
from utils.cli import ArgumentParser, run_cli
from utils.errors import InputNotFound


def pieces(mask) -> int:
    """8-connected pieces of a 2-D {0,1} mask."""
    return int(ndimage.label(np.asarray(mask) > 0.5, structure=np.ones((3, 3), bool))[1])


def report(root: Path, size: int, latent: int) -> list[dict]:
    """Per defect type of ``root``'s ``<category>/ground_truth/<defect>/*.png`` (masks loaded at ``size``): masks,
    all-zero and broken latent masks (more pieces than the pixel mask) under the official rule and under
    ``latent_mask``, latent cells kept by each and the pixel area in latent cells (the mask's mean over each
    ``size/latent`` block, summed)."""
    files = sorted(Path(root).glob("*/ground_truth/*/*.png"))
    if not files:
        raise InputNotFound(f"--root {root}: no <category>/ground_truth/<defect>/*.png masks")
    rows: dict = {}
    for p in files:
        m = torch.from_numpy(load_mask(p, size))[None, None]
        official = (F.interpolate(m, size=(latent, latent), mode="bilinear", align_corners=False) >= 0.5).float()
        now = latent_mask(m, (latent, latent))
        area = float(F.adaptive_avg_pool2d(m, (latent, latent)).sum())
        r = rows.setdefault(p.parent.name, {"defect": p.parent.name, "masks": 0, "empty_official": 0,
                                            "broken_official": 0, "empty_now": 0, "broken_now": 0,
                                            "cells_official": 0.0, "cells_now": 0.0, "area": 0.0})
        n_pixel = pieces(m[0, 0])
        r["masks"] += 1
        for rule, lat in (("official", official), ("now", now)):
            r[f"empty_{rule}"] += int(lat.sum() == 0 and n_pixel > 0)
            r[f"broken_{rule}"] += int(pieces(lat[0, 0]) > n_pixel)
            r[f"cells_{rule}"] += float(lat.sum())
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
    print(f"{'defect':12s} {'masks':>5s} {'empty off.':>10s} {'broken off.':>11s} {'empty now':>9s} "
          f"{'broken now':>10s} {'area off.':>9s} {'area now':>8s}")
    for r in report(Path(a.root), a.size, a.latent):
        area = max(r["area"], 1e-9)
        print(f"{r['defect']:12s} {r['masks']:5d} {r['empty_official']:10d} {r['broken_official']:11d} "
              f"{r['empty_now']:9d} {r['broken_now']:10d} {r['cells_official'] / area:9.2f} "
              f"{r['cells_now'] / area:8.2f}")
    return 0



def cli(argv=None) -> int:
    """``scripts/latent_mask_report.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("latent_mask_report.py", lambda: main(argv))
