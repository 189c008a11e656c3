"""Train a segmenter on a generated-pairs folder (+ normal images 50/50) and test it on real held-out anomalies.

The pairs folder has the generate_with_mask.py layout ``<pairs>/<category>/<defect>/{image,mask}/<n>.png``
(``--pairs`` may also point at one category or one defect folder).  The test set is the evaluation
side of the per-defect split of ``--dataset_root`` plus ``test/good``; it is never used for model
selection (fixed step schedule; ``--val_fraction`` carves a validation split out of the *synthetic* pairs).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ldm.data.layouts import index_category
from ldm.segmentation.data import EvaluationSet, scan_pairs
from ldm.segmentation.recipe import SegmenterOptions, training_setup
from ldm.segmentation.train import fit_and_evaluate
from utils.atomic import write_text_atomic
from utils.cli import run_cli
from utils.contact_sheet import prediction_sheet
from utils.errors import UserError
from utils.metrics import METRIC_KEYS, METRIC_LABELS, jsonable
from utils.options import option, options_from_args, options_parser


@dataclass(kw_only=True)
class TrainOnPairsOptions(SegmenterOptions):
    """One segmenter run: the pairs it trains on, the real dataset it is tested on, where it writes."""

    pairs: str = option(help="generated-pairs folder (generate_with_mask.py layout)")
    dataset_root: str = option(help="real dataset root (normals + test set)")
    layout: str = option("mvtec", help="dataset layout: mvtec, btad, visa, folder, texture_ad")
    category: str = option(help="the category to train and test on")
    out: str = option(help="output folder: segmenter.ckpt, metrics.json, predictions.png")
    examples: int = option(6, help="test images on the contact sheet (default 6)", parse=int)


def get_parser() -> argparse.ArgumentParser:
    return options_parser(TrainOnPairsOptions, __doc__)


def main(argv=None) -> int:
    """``train_segmenter.py``: parse the flags and :func:`train_on_pairs`."""
    return train_on_pairs(options_from_args(TrainOnPairsOptions, get_parser().parse_args(argv)))


def train_on_pairs(a: TrainOnPairsOptions) -> int:
    """Train, test, and write ``<out>/segmenter.ckpt``, ``metrics.json`` and ``predictions.png``."""
    cfg, arch_kwargs = training_setup(a)
    index = index_category(a.layout, a.dataset_root, a.category)
    pairs = scan_pairs(a.pairs, a.category)
    if not pairs:
        raise UserError(f"--pairs {a.pairs}: no pairs for category '{a.category}'")
    eval_set = EvaluationSet(index, a.size, a.split)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"training {a.arch} on {len(pairs)} pairs from {a.pairs} + {len(index.train_good)} normal images "
          f"({a.steps} steps, batch {a.batch_size}, device {a.device})")
    res = fit_and_evaluate(pairs, index.train_good, eval_set, cfg, a.arch, a.size, a.val_fraction,
                           a.normal_ratio, out / "segmenter.ckpt", arch_kwargs, n_examples=a.examples)
    m = res["metrics"]
    doc = {"test_set": eval_set.description, "category": a.category, "pairs": str(a.pairs),
           "n_train_pairs": res["n_pairs"], "n_val_pairs": res["n_val"], "metrics": m,
           "synthetic_validation": res["train"]["val"], "selected_step": res["train"]["selected_step"],
           "train_seconds": res["train"]["seconds"],
           "args": dataclasses.asdict(a)}
    write_text_atomic(out / "metrics.json", json.dumps(jsonable(doc), indent=1) + "\n")
    if res["examples"]:
        prediction_sheet(res["examples"], out / "predictions.png", title=f"{a.category}: {eval_set.description}")
    print(f"test set: {eval_set.description} ({m['n_images']} images, {m['n_anomalous_images']} anomalous)")
    for k in METRIC_KEYS:
        print(f"  {METRIC_LABELS[k]:<36} {m[k]:.4f}")
    print(f"wrote {out / 'metrics.json'}")
    return 0


def cli(argv=None) -> int:
    """``scripts/train_segmenter.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("train_segmenter.py", lambda: main(argv))
