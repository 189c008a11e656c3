"""The training job's options: ``main.py``'s flags (the CompVis ``main.py`` spellings), one field each.

Unknown ``key=value`` arguments are not options: they override the merged YAML (``main.py``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional

from utils.acceleration import precision_option
from utils.options import option


def str2bool(v):
    """CompVis's boolean flags: ``-t``, ``-t true``, ``-t no`` ... (yes/true/t/y/1, no/false/f/n/0)."""
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected, got '{v}'")


def switch(default: bool, *, help: str, flag) -> object:
    """A CompVis boolean: the bare flag means True, or it takes a yes/no value (``str2bool``)."""
    return option(default, help=help, flag=flag, parse=str2bool, nargs="?", const=True)


@dataclass
class TrainOptions:
    """Everything ``main.py`` reads from its command line (``ldm.config_check.check_run`` checks them)."""

    name: str = option("", flag=("-n", "--name"), help="postfix of the log directory name")
    resume: str = option("", flag=("-r", "--resume"), help="resume from a log directory or a checkpoint in it")
    base: list = option(flag=("-b", "--base"), default_factory=list, nargs="*", metavar="config.yaml",
                        help="YAML configs, merged left to right; key=value arguments override them")
    train: bool = switch(False, flag=("-t", "--train"), help="train")
    no_test: bool = switch(False, flag="--no-test", help="skip testing")
    seed: int = option(23, flag=("-s", "--seed"), parse=int, help="seed for seed_everything")
    postfix: str = option("", flag=("-f", "--postfix"), help="postfix for the default log directory name")
    logdir: str = option("logs", flag=("-l", "--logdir"), help="directory for logging")
    log_folder: Optional[str] = option(None, flag=("-lf", "--log_folder"),
                                       help="fixed run folder: the run is logged in <logdir>/<log_folder>")
    scale_lr: bool = switch(True, flag="--scale_lr",
                            help="lr = accumulate_grad_batches × n_devices × batch_size × base_learning_rate")
    actual_resume: Optional[str] = option(None, help="pretrained LDM checkpoint, loaded non-strictly (a "
                                                     "missing/unexpected summary is printed)")
    init_word: Optional[str] = option(None, help="word (one wordpiece) initialising the anomaly embeddings")
    mvtec_path: Optional[str] = option(None, help="dataset root, or the official form "
                                                  "<root>/<category>/ground_truth/<defect>/")
    category: Optional[str] = option(None, help="category (overrides the config)")
    defect: Optional[str] = option(None, help="defect type (overrides the config)")
    embedding_manager_ckpt: str = option("", help="initialise embeddings from this embeddings.pt")
    placeholder_string: Optional[str] = option(None, help="placeholder token in captions (default '*')")
    gpus: Optional[str] = option(None, help="device indices: '0', '0,', '0,1'; -1 = all GPUs; absent/none = CPU")
    max_steps: Optional[int] = option(None, parse=int, help="shortcut for lightning.trainer.max_steps")
    precision: Optional[str] = precision_option(training=True)
    threads: int = option(0, parse=int, help="CPU threads for torch (0: torch's default, one per core)")
