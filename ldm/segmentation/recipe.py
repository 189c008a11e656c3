"""The segmenter recipe as command-line flags: ``train_segmenter.py`` and ``compare_synthesizers.py`` share
them, so both train the identical segmenter (architecture, steps, batch, lr, loss, normal share, split, seed).

``SegmenterOptions`` declares the recipe once (each field is its flag, ``utils.options``); a job's options
subclass it. ``training_setup`` checks the values (one-line errors, before anything is read or written) and
turns them into a :class:`ldm.segmentation.train.TrainConfig` plus the architecture's keyword arguments.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ldm.data.layouts import SPLIT_MODES
from ldm.segmentation import ARCHS
from ldm.segmentation.train import LOSSES, TrainConfig
from utils.errors import InputNotFound, UserError
from utils.options import option


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(kw_only=True)
class SegmenterOptions:
    """The recipe every segmenter of a job is trained with; ``add_options(parser, SegmenterOptions)`` gives
    the flags (a job's own options subclass it)."""

    arch: str = option("unet", help="segmenter (default unet: CPU-friendly)", choices=ARCHS)
    segformer_dir: Optional[str] = option(
        None, help="local save_pretrained folder with SegFormer weights (random init if omitted)")
    base_channels: int = option(16, help="U-Net base width (default 16)", parse=int)
    size: int = option(256, help="train/test resolution (default 256)", parse=int)
    steps: int = option(2000, help="optimisation steps, fixed schedule (default 2000)", parse=int)
    batch_size: int = option(8, help="training batch size (default 8)", parse=int)
    lr: float = option(1e-4, help="Adam learning rate (default 1e-4)", parse=float)
    loss: str = option("focal", help="focal (gamma 2) or ce_dice (CE + soft Dice) (default focal)", choices=LOSSES)
    normal_ratio: float = option(0.5, help="share of normal samples (default 0.5)", parse=float)
    val_fraction: float = option(
        0.0, parse=float,
        help="share of synthetic pairs held out for validation; if > 0 the weights with the best validation "
             "anomaly IoU are tested (default 0: fixed schedule, final weights)")
    val_every: int = option(0, help="validate every N steps (0: at the end)", parse=int)
    split: str = option("third", help="per-defect split; the test side is [n//3:] for 'third' (default)",
                        choices=SPLIT_MODES)
    seed: int = option(0, help="seed of the initial weights, the data order and the validation split (default 0)",
                       parse=int)
    device: str = option(help="default: cuda if available, else cpu", default_factory=default_device)
    num_workers: int = option(0, help="data loader worker processes (default 0)", parse=int)
    threads: int = option(0, help="CPU threads for torch (0: torch default); 1 is often faster on a busy shared CPU",
                          parse=int)


def training_setup(a: SegmenterOptions) -> tuple[TrainConfig, dict]:
    """(TrainConfig, arch kwargs) of a job's options; one-line errors for impossible values and combinations,
    all before anything is read or written. Sets torch's CPU threads when ``threads`` > 0."""
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
