#!/usr/bin/env python
"""Write synthetic image–mask pairs with a trained FAST (or STAGE) run — the official command line, extended.

    python generate_with_mask.py --data_root data/texture-ad --sample_name brick --anomaly_name scratch \
        --pt_path logs/fast/brick+scratch/checkpoints --weight_idx 600 \
        --mask_path data/texture-ad/brick/ground_truth/scratch/ --outdir outputs/generated

Output: ``<outdir>/<sample_name>/<anomaly_name>/{image,mask,image-mask-ori,meta}/<n>.png|json`` plus
``pairs.csv``, ``synthesis.json`` (settings), ``provenance.json`` (what the generator trained on) and
``contact_sheet.png``. Pair n depends only on (seed, sample, anomaly, n): the same for any batch size,
after an interruption, and on every process of a ``torchrun`` run (indices are split by rank).
Re-running skips finished pairs; a rerun with any pixel-changing setting changed is refused. Pixels
outside the mask are the normal image's, exactly -- except for STAGE in its official mode (no paste;
``paste: true`` in its config restores it), whose background error ``pairs.csv`` reports. The work is
done by ``ldm.generation``.
"""
from __future__ import annotations

import argparse
import os
import sys

from utils.acceleration import add_cli_flags
from utils.cli import ArgumentParser

SAMPLERS = ("aias", "ddpm", "ddim", "plms", "stage")


def batch_size_arg(value: str):
    if value == "auto":
        return value
    if value.isdigit() and int(value) >= 1:
        return int(value)
    raise argparse.ArgumentTypeError(f"expected a number >= 1 or auto, got {value!r}")


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_root", required=True,
                   help="folder of normal images, or a dataset root (then <root>/<sample_name>/train/good)")
    p.add_argument("--sample_name", required=True, help="category (output folder level 1)")
    p.add_argument("--anomaly_name", required=True, help="defect type (output folder level 2)")
    p.add_argument("--pt_path", required=True, help="the run's checkpoints/ folder (embeddings_gs-N, FARM-N, fine-N)")
    p.add_argument("--weight_idx", type=int, default=None,
                   help="N of the artifacts to use (default: the latest); a wrong N lists the available ones")
    p.add_argument("--mask_path", default=None,
                   help="masks of the defect type: <root>/<category>/ground_truth/<defect>/ (the generator side "
                        "of the run's split is used) or any folder of masks (all of them)")
    p.add_argument("--mask_split", default=None, choices=("third", "all", "anomalydiffusion"),
                   help="split whose generator side gives the masks (default: the one the run was trained with)")
    p.add_argument("--init_word", default=None, help="init word of the embeddings (only builds the manager)")
    p.add_argument("--config", default=None, help="model config (default: the run's saved *-project.yaml)")
    p.add_argument("--ckpt", default=None,
                   help="backbone checkpoint (default: the one the run was trained from, model.params.ckpt_path)")
    p.add_argument("--outdir", default=".", help="output root")
    p.add_argument("--sampler", choices=SAMPLERS, default="aias")
    p.add_argument("--steps", type=int, default=50,
                   help="network calls (aias: segments + refinement steps; ddim/plms: steps; ddpm: ignored)")
    p.add_argument("--kernel", choices=("exact", "paper"), default="exact", help="AIAS segment kernel")
    p.add_argument("--refine_steps", type=int, default=2, help="AIAS plain DDPM steps at the end")
    p.add_argument("--eta", type=float, default=1.0, help="DDIM eta (1.0 = posterior sampling, like AIAS)")
    p.add_argument("--farm_mode", choices=("input", "state", "off"), default="input",
                   help="FARM re-injection: input (official: changes the UNet input at t_s), state (paper: "
                        "replaces the masked state at t_e), off")
    p.add_argument("--writeback", choices=("window", "every", "off"), default="window",
                   help="background write-back: window = only for 250 < t_e < 750 (official), every step, off")
    p.add_argument("--t_start", type=int, default=None,
                   help="start from the normal latent noised to this 0-based step (SDEdit/NDI); every sampler "
                        "then makes its first network call at t_start")
    p.add_argument("--mask_source", choices=("real", "augmented", "perlin", "generated"), default="real",
                   help="generated: masks sampled from a mask model (--mask_model, GroundingAnomaly's mask TI)")
    p.add_argument("--mask_model", default=None, help="mask run's checkpoints/ folder (--mask_source generated)")
    p.add_argument("--mask_weight_idx", type=int, default=None, help="N of mask_ti-N.pt (default: the latest)")
    p.add_argument("--mask_steps", type=int, default=50, help="sampling steps of the mask model")
    p.add_argument("--ndi", choices=("on", "off"), default="on",
                   help="GroundingAnomaly's NDI: on = start from the normal image noised to the model's t_start, "
                        "off = from pure noise (the w/o-NDI ablation; not with --t_start)")
    p.add_argument("--layout", default=None, help="dataset layout of --data_root / --mask_path (default: the run's)")
    p.add_argument("--prompt", default="Anomaly *", help="caption; '*' is replaced by the learned embeddings")
    p.add_argument("--foreground", choices=("auto", "on", "off"), default="auto",
                   help="keep masks on the object (moved or redrawn otherwise); auto: object categories only")
    p.add_argument("--fg_dir", default=None, help="a foreground mask per normal image (same file name); default Otsu")
    p.add_argument("--fg_min_share", type=float, default=0.9, help="share of a mask that must lie on the object")
    p.add_argument("--native", action="store_true",
                   help="keep normal images at their own size (any, non-square): generate in a window around the "
                        "mask at the model's size and paste it back; pixels outside the mask stay bit-identical")
    p.add_argument("--native_margin", type=float, default=0.5, help="window = mask box × (1 + margin), at least "
                                                                     "the model size")
    p.add_argument("--pairs_csv", default=None,
                   help="CSV with columns normal_image, mask[, defect]: which mask goes on which image")
    p.add_argument("--n_samples", type=int, default=500)
    p.add_argument("--batch_size", type=batch_size_arg, default="auto",
                   help="pairs per network batch, or auto (default): 8 on the CPU; on a GPU the largest power "
                        "of two up to 64 that fits in memory (pairs do not depend on it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 … (default: cuda if available)")
    add_cli_flags(p)
    p.add_argument("--adaptive_mask", action="store_true", help="accepted for compatibility; ignored (as officially)")
    p.add_argument("--no_progress", action="store_true")
    return p


def options(argv=None):
    from ldm.generation import GenerationOptions

    a = get_parser().parse_args(argv)
    return GenerationOptions(
        pt_path=a.pt_path, sample_name=a.sample_name, anomaly_name=a.anomaly_name, data_root=a.data_root,
        outdir=a.outdir, weight_idx=a.weight_idx, mask_path=a.mask_path, mask_source=a.mask_source,
        mask_split=a.mask_split, layout=a.layout, init_word=a.init_word, config=a.config, ckpt=a.ckpt,
        sampler=a.sampler, steps=a.steps, kernel=a.kernel, refine_steps=a.refine_steps, eta=a.eta,
        farm_mode=a.farm_mode, writeback=a.writeback, t_start=a.t_start, prompt=a.prompt, foreground=a.foreground,
        fg_dir=a.fg_dir, fg_min_share=a.fg_min_share, native=a.native, native_margin=a.native_margin,
        pairs_csv=a.pairs_csv, mask_model=a.mask_model, mask_weight_idx=a.mask_weight_idx,
        mask_steps=a.mask_steps, ndi=a.ndi == "on", n_samples=a.n_samples,
        batch_size=a.batch_size, seed=a.seed, device=a.device, progress=not a.no_progress,
        precision=a.precision, compile=a.compile,
        rank=int(os.environ.get("RANK", 0)), world_size=int(os.environ.get("WORLD_SIZE", 1)))


def main(argv=None) -> dict:
    from ldm.generation import generate_pairs

    return generate_pairs(options(argv))


def cli() -> int:
    """Console entry point (``pip install -e .`` installs it)."""
    from utils.cli import run_cli

    return run_cli("generate_with_mask.py", lambda: main() and 0)


if __name__ == "__main__":
    sys.exit(cli())
