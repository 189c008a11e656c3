"""The demo's command line and tiers: the flags, the budget of each tier (``--quick``, ``--smoke``, default,
``--full``) and what a tier implies (textures, seeds, STAGE / GroundingAnomaly rows, ablations), and the
folders of a defect family (``--family``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import ldm.demo
from ldm.data.texture_ad import FAMILIES
from utils.cli import ArgumentParser
from utils.errors import UserError

TEXTURES = ("brick", "grass", "gravel")
# budgets per tier: (ae, ldm, fast, n_samples, seg_steps, mask-TI steps, masks of its diversity report); the
# mask model trains at ~2.5 steps/s on one busy core: 500 steps take ~3.5 minutes per texture
DEFAULT_BUDGET = dict(ae_steps=250, ldm_steps=800, fast_steps=200, n_samples=128, seg_steps=400, mask_steps=500,
                      diversity_masks=64)
TIERS = {
    "default": DEFAULT_BUDGET,
    "quick": dict(ae_steps=60, ldm_steps=150, fast_steps=60, n_samples=40, seg_steps=60, mask_steps=200,
                  diversity_masks=32),
    "smoke": dict(ae_steps=3, ldm_steps=3, fast_steps=3, n_samples=4, seg_steps=3, mask_steps=3, diversity_masks=4),
    "full": DEFAULT_BUDGET,  # on every texture x 3 pipeline seeds: pipeline seed 0 reuses a default run's stages
}


def family_suffix(family: str) -> str:
    """``""`` for texture-ad, ``-<family>`` otherwise: the suffix of a family's data, comparison and report."""
    return "" if family == "texture-ad" else f"-{family}"


def family_dir(out: Path, name: str, family: str) -> Path:
    """``<out>/<name><suffix>``: a family's own ``data/texture-ad``, ``generated``, ``comparison`` or
    ``ablations`` folder. One per family, because the comparison trains on every defect folder it finds."""
    return Path(out) / f"{name}{family_suffix(family)}"


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=ldm.demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="everything the demo writes goes here")
    p.add_argument("--category", default="brick",
                   help="texture-ad categories, comma-separated, or 'all' (brick, grass, gravel); --full: all")
    p.add_argument("--family", choices=list(FAMILIES), default="texture-ad",
                   help="defect family to synthesise and evaluate: texture-ad, or wild (other rendering code on "
                        "the same normal images, never used to tune anything); the backbone is always texture-ad's")
    p.add_argument("--defects", default=None,
                   help="defect types to synthesise (default: all of --family; the comparison needs all of them)")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--quick", action="store_true", help="small budgets everywhere (a few minutes)")
    tier.add_argument("--smoke", action="store_true", help="a few steps per stage: the plumbing only (tests)")
    tier.add_argument("--full", action="store_true",
                      help="the evidence tier: every texture x 3 pipeline seeds (--pipeline_seeds), STAGE and "
                           "GroundingAnomaly rows, paired intervals of FAST - best baseline, and the ablations")
    p.add_argument("--n_samples", type=int, default=None, help="pairs per defect type")
    p.add_argument("--ae_steps", type=int, default=None)
    p.add_argument("--ldm_steps", type=int, default=None)
    p.add_argument("--fast_steps", type=int, default=None)
    p.add_argument("--seg_steps", type=int, default=None, help="segmenter training steps per synthesizer")
    p.add_argument("--aias_steps", type=int, default=10, help="AIAS network calls (segments + 2 DDPM steps)")
    p.add_argument("--seeds", type=int, default=None, help="segmenter seeds per pipeline seed (default 1)")
    p.add_argument("--pipeline_seeds", type=int, default=None,
                   help="run the whole pipeline this many times, retraining the autoencoder, LDM, generators, "
                        "baselines and segmenter with other seeds, and report mean +- std and the paired 95 %% "
                        "interval of FAST - best baseline (default 1; --full 3). Seed 0 is the default demo")
    p.add_argument("--record_evidence", action="store_true",
                   help="with --pipeline_seeds >= 2: also write the evidence to docs/evidence/<family>.json, "
                        "the record every default demo compares its single run with")
    p.add_argument("--mask_steps", type=int, default=None,
                   help="grounding ablations: training steps of the mask-TI model (one per texture) whose masks "
                        "the 'GroundingAnomaly, generated masks' row uses")
    p.add_argument("--diversity_masks", type=int, default=None,
                   help="masks sampled per defect type for the mask model's diversity report")
    p.add_argument("--ablation_samples", type=int, default=24,
                   help="pairs per defect type of every ablation variant (DDPM-1000 costs 100x AIAS-10)")
    p.add_argument("--ablation_categories", default="brick", help="--full: textures of the ablations")
    p.add_argument("--stage", action="store_true",
                   help="also train STAGE per defect type (same backbone and budget), generate STAGE-10 pairs and "
                        "add a 'stage' row to the comparison (always on with --full)")
    p.add_argument("--grounding", action="store_true",
                   help="also train GroundingAnomaly per defect type (same backbone and budget), generate NDI+AIAS "
                        "pairs and add a 'grounding' row (always on with --full; --full adds its ablations)")
    p.add_argument("--ablations", nargs="?", const="all", default=None, choices=("all", "fast", "grounding"),
                   help="run the ablations of --full at this tier's budget: fast (FARM off, AIAS-50, DDPM-1000), "
                        "grounding (w/o SCM, GSM, NDI, generated masks; implies --grounding) or all (the default)")
    p.add_argument("--gpus", default=None, help="as main.py --gpus (default: CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per stage (0: one per core)")
    return p


def resolve(opt) -> str:
    """Fill ``opt`` from its tier (budgets, seeds, textures, implied rows and ablations, the defect list) and check
    the budgets; returns the tier's name."""
    tier = "full" if opt.full else "quick" if opt.quick else "smoke" if opt.smoke else "default"
    for k, v in TIERS[tier].items():
        if getattr(opt, k) is None:
            setattr(opt, k, v)
    if opt.seeds is None:
        opt.seeds = 1
    if opt.pipeline_seeds is None:
        opt.pipeline_seeds = 3 if opt.full else 1
    for k in ("n_samples", "ae_steps", "ldm_steps", "fast_steps", "seg_steps", "aias_steps", "seeds", "mask_steps",
              "diversity_masks", "pipeline_seeds"):
        if getattr(opt, k) < 1:
            raise UserError(f"--{k} must be >= 1, got {getattr(opt, k)}")
    opt.categories = list(TEXTURES) if opt.full or opt.category == "all" else \
        [c.strip() for c in opt.category.split(",") if c.strip()]
    opt.stage = bool(opt.stage or opt.full)
    if opt.full and opt.ablations is None:
        opt.ablations = "all"
    opt.grounding = bool(opt.grounding or opt.full or opt.ablations in ("all", "grounding"))
    unknown = [c for c in opt.categories if c not in TEXTURES]
    if unknown or not opt.categories:
        raise UserError(f"--category must be 'all' or some of {', '.join(TEXTURES)}, got '{opt.category}'")
    opt.defect_list = [d for d in (opt.defects or ",".join(FAMILIES[opt.family])).split(",") if d]
    if not opt.defect_list:
        raise UserError("--defects is empty")
    if opt.record_evidence and opt.pipeline_seeds < 2:
        raise UserError("--record_evidence needs --pipeline_seeds >= 2 (one run has no spread to record)")
    return tier


def ablation_categories(opt) -> list[str]:
    """The textures of the ablations (``--ablation_categories``)."""
    return [c for c in opt.ablation_categories.split(",") if c]

