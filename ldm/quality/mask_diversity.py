"""Sample masks from a mask-TI run and report their diversity against the real masks.

    python scripts/mask_ti_report.py --pt_path logs/grounding_masks/brick+scratch/checkpoints \\
        --name brick+scratch --mask_path data/texture-ad/brick/ground_truth/scratch/ --n 64 --size 64 \\
        --out outputs/mask_ti/brick+scratch

Writes ``diversity.json`` (``ldm.models.diffusion.mask_ti.mask_diversity``: mean pairwise IoU of the
generated and of the real masks, mean nearest-real IoU, share of near-copies, share of distinct masks,
mean areas) and ``sheet.png`` (real masks on the first rows, generated ones below). ``--mask_path`` may
be a dataset defect folder (then only the generator side of ``--mask_split`` is compared) or any folder
of masks. The real masks come from the one mask-source factory (``ldm.data.mask_source``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ldm.data.generated_masks import GeneratedMasks
from ldm.data.mask_source import mask_source
from ldm.models.diffusion.mask_ti import mask_diversity
from utils.cli import ArgumentParser, run_cli
from utils.images import make_grid, save_png


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pt_path", required=True, help="<mask-TI run>/checkpoints")
    p.add_argument("--name", required=True, help="category+defect token to sample")
    p.add_argument("--mask_path", required=True, help="the real masks (a ground_truth/<defect>/ folder)")
    p.add_argument("--mask_split", default="third", help="generator side of this split (dataset folders)")
    p.add_argument("--layout", default="mvtec")
    p.add_argument("--weight_idx", type=int, default=None)
    p.add_argument("--n", type=int, default=64, help="masks to generate")
    p.add_argument("--size", type=int, default=64, help="compare at this size")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps per mask")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", required=True)
    return p


def main(argv=None) -> int:
    """``mask_ti_report.py``: sample ``--n`` masks of ``--name``, compare them with the real ones, write
    ``diversity.json`` and ``sheet.png``."""
    opt = get_parser().parse_args(argv)
    category, defect = opt.name.split("+", 1) if "+" in opt.name else (opt.name, None)
    real_src = mask_source("real", opt.size, opt.seed, layout=opt.layout, split=opt.mask_split, category=category,
                           defect=defect, mask_path=opt.mask_path)
    real = [m.astype(np.float32) for m in real_src.masks]
    gen_src = GeneratedMasks.from_run(opt.pt_path, opt.name, size=opt.size, seed=opt.seed,
                                      weight_idx=opt.weight_idx, device=opt.device, steps=opt.steps)
    generated = [gen_src.draw(i) for i in range(opt.n)]
    report = mask_diversity(generated, real)
    report.update({"name": opt.name, "step": gen_src.step, "pt_path": str(Path(opt.pt_path).resolve()),
                   "mask_path": str(Path(opt.mask_path).resolve()), "size": opt.size, "steps": opt.steps,
                   "seed": opt.seed})
    out = Path(opt.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "diversity.json").write_text(json.dumps(report, indent=2))
    tiles = torch.from_numpy(np.stack(real[:16] + generated[:32]))[:, None].expand(-1, 3, -1, -1) * 2 - 1
    save_png(make_grid(tiles, nrow=8), out / "sheet.png")
    print(json.dumps({k: v for k, v in report.items() if not isinstance(v, str)}, indent=2))
    return 0


def cli(argv=None) -> int:
    """``scripts/mask_ti_report.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("mask_ti_report.py", lambda: main(argv))
