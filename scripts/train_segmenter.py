#!/usr/bin/env python
"""Train a segmenter on a generated-pairs folder (+ normal images 50/50) and test it on real held-out anomalies.

The pairs folder has the generate_with_mask.py layout ``<pairs>/<category>/<defect>/{image,mask}/<n>.png``
(``--pairs`` may also point at one category or one defect folder).  The test set is the evaluation
side of the per-defect split of ``--dataset_root`` plus ``test/good``; it is never used for model
selection (fixed step schedule; ``--val_fraction`` carves a validation split out of the *synthetic* pairs).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch  # noqa: E402

from ldm.data.layouts import SPLIT_MODES, index_category  # noqa: E402
from ldm.segmentation import ARCHS  # noqa: E402
from ldm.segmentation.data import EvaluationSet, scan_pairs  # noqa: E402
from ldm.segmentation.train import LOSSES, TrainConfig, fit_and_evaluate  # noqa: E402
from utils.atomic import write_text_atomic  # noqa: E402
from utils.cli import ArgumentParser  # noqa: E402
from utils.contact_sheet import prediction_sheet  # noqa: E402
from utils.errors import InputNotFound, UserError  # noqa: E402
from utils.metrics import METRIC_KEYS, METRIC_LABELS, jsonable  # noqa: E402


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_training_args(p: argparse.ArgumentParser) -> None:
    """Flags shared with compare_synthesizers.py, so both run the identical recipe."""
    p.add_argument("--arch", default="unet", choices=ARCHS, help="segmenter (default unet: CPU-friendly)")
    p.add_argument("--segformer_dir", default=None,
                   help="local save_pretrained folder with SegFormer weights (random init if omitted)")
    p.add_argument("--base_channels", type=int, default=16, help="U-Net base width (default 16)")
    p.add_argument("--size", type=int, default=256, help="train/test resolution (default 256)")
    p.add_argument("--steps", type=int, default=2000, help="optimisation steps, fixed schedule (default 2000)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--loss", default="focal", choices=LOSSES)
    p.add_argument("--normal_ratio", type=float, default=0.5, help="share of normal samples (default 0.5)")
    p.add_argument("--val_fraction", type=float, default=0.0,
                   help="share of synthetic pairs held out for validation; if > 0 the weights with the best "
                        "validation anomaly IoU are tested (default 0: fixed schedule, final weights)")
    p.add_argument("--val_every", type=int, default=0, help="validate every N steps (0: at the end)")
    p.add_argument("--split", default="third", choices=SPLIT_MODES,
                   help="per-defect split; the test side is [n//3:] for 'third' (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=default_device(), help="default: cuda if available, else cpu")
    p.add_argument("--num_workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch (0: torch default); 1 is often faster on a busy shared CPU")


def training_setup(a: argparse.Namespace) -> tuple[TrainConfig, dict]:
    """(TrainConfig, arch kwargs) from parsed flags; one-line errors for impossible values and combinations,
    all before anything is read or written."""
    for flag, value, low in (("--threads", a.threads, 0), ("--size", a.size, 1),
                             ("--base_channels", a.base_channels, 1), ("--examples", getattr(a, "examples", 0), 0)):
        if value < low:
            raise UserError(f"{flag} must be >= {low}, got {value}")
    if not 0.0 <= a.normal_ratio <= 1.0:
        raise UserError(f"--normal_ratio must be in [0, 1], got {a.normal_ratio}")
    if not 0.0 <= a.val_fraction < 1.0:
        raise UserError(f"--val_fraction must be in [0, 1), got {a.val_fraction}")
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    if a.segformer_dir and not a.arch.startswith("segformer"):
        raise UserError("--segformer_dir needs --arch segformer-*")
    arch_kwargs = {"base_channels": a.base_channels} if a.arch == "unet" else {}
    if a.segformer_dir:
        if not (Path(a.segformer_dir).expanduser() / "config.json").is_file():
            raise InputNotFound(f"--segformer_dir {a.segformer_dir}: no config.json (expected a local "
                                    "save_pretrained folder; nothing is downloaded)")
        arch_kwargs["pretrained_dir"] = a.segformer_dir
    cfg = TrainConfig(steps=a.steps, batch_size=a.batch_size, lr=a.lr, loss=a.loss, seed=a.seed,
                      val_every=a.val_every, num_workers=a.num_workers, device=a.device,
                      log_every=max(1, min(50, a.steps // 10)))
    return cfg, arch_kwargs


def _main(argv=None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, help="generated-pairs folder (generate_with_mask.py layout)")
    p.add_argument("--dataset_root", required=True, help="real dataset root (normals + test set)")
    p.add_argument("--layout", default="mvtec", help="dataset layout: mvtec, btad, visa, folder, texture_ad")
    p.add_argument("--category", required=True)
    p.add_argument("--out", required=True, help="output folder: segmenter.ckpt, metrics.json, predictions.png")
    p.add_argument("--examples", type=int, default=6, help="test images on the contact sheet (default 6)")
    add_training_args(p)
    a = p.parse_args(argv)
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
           "args": vars(a)}
    write_text_atomic(out / "metrics.json", json.dumps(jsonable(doc), indent=1) + "\n")
    if res["examples"]:
        prediction_sheet(res["examples"], out / "predictions.png", title=f"{a.category}: {eval_set.description}")
    print(f"test set: {eval_set.description} ({m['n_images']} images, {m['n_anomalous_images']} anomalous)")
    for k in METRIC_KEYS:
        print(f"  {METRIC_LABELS[k]:<36} {m[k]:.4f}")
    print(f"wrote {out / 'metrics.json'}")
    return 0



def main(argv=None) -> int:
    """Entry point: user errors print one line and return 2; bugs keep their traceback."""
    from utils.cli import run_cli

    return run_cli("train_segmenter.py", lambda: _main(argv))


if __name__ == "__main__":
    sys.exit(main())
