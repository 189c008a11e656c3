#!/usr/bin/env python
"""Train a model of the LDM family from YAML configs (the AnomalyDiffusion/FAST command line on Lightning 2).

Examples::

    python main.py --base configs/fast/texture-demo.yaml -t --actual_resume logs/ldm/checkpoints/last.ckpt \
        --mvtec_path data/texture-ad/brick/ground_truth/scratch/ --init_word scratch -lf fast-brick-scratch
    python main.py -r logs/fast-brick-scratch            # resume: weights, optimizer state and step

Unknown ``key=value`` arguments override the merged YAML (OmegaConf dotlist), e.g.
``lightning.trainer.max_steps=200 data.params.batch_size=4``.
"""
from __future__ import annotations

import argparse
import glob
import inspect
import os
import sys
from pathlib import Path

from utils.acceleration import Acceleration
from utils.errors import UserError


def get_parser() -> argparse.ArgumentParser:
    """One flag per field of ``ldm.trainer.options.TrainOptions``."""
    from ldm.trainer.options import TrainOptions
    from utils.options import options_parser

    return options_parser(TrainOptions, __doc__)


# Framework messages that say nothing about this run, each for a known reason:
EXPECTED_WARNINGS = (
    # AutoencoderKL steps its optimizer itself (manual optimization); Lightning cannot tell and suggests
    # keeping a pre-step copy of the weights. The post-step state it saves is the one a resume needs.
    r"Using ModelCheckpoint with manual optimization",
    # configs without a validation section (the tiny demo configs) skip validation on purpose
    r"You defined a `validation_step` but have no `val_dataloader`",
    # Lightning 2.6 calls a torch pytree API that torch 2.13 deprecated; nothing to fix on our side
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # frozen sub-models (first stage, and the backbone under FAST) stay in eval mode on purpose (ddpm.freeze)
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # num_workers: 0 is the demo's choice (items come from an in-memory cache; workers cost more than they save)
    r"The '.*_dataloader' does not have many workers",
)


def silence_expected_warnings() -> None:
    import warnings

    for pattern in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    import logging

    class _NoAdverts(logging.Filter):
        """Lightning advertises a cloud logger on every run; that line is not about the run."""

        def filter(self, record):
            return "litlogger" not in record.getMessage()

    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_NoAdverts())


def split_overrides(unknown: list[str]) -> list[str]:
    bad = [u for u in unknown if "=" not in u or u.startswith("-")]
    if bad:
        raise UserError(f"unrecognized arguments {bad} (YAML overrides are written key=value)")
    return unknown


def resolve_logdir(opt, now: str):
    """Returns (logdir, ckpt_to_resume_or_None, base_configs)."""
    if opt.resume:
        if not os.path.exists(opt.resume):
            raise UserError(f"cannot find --resume path '{opt.resume}'")
        if os.path.isfile(opt.resume):
            parts = Path(opt.resume).resolve().parts
            if "checkpoints" not in parts:
                raise UserError(f"--resume checkpoint '{opt.resume}' is not inside <logdir>/checkpoints/")
            idx = len(parts) - 1 - parts[::-1].index("checkpoints")
            logdir = str(Path(*parts[:idx]))
            ckpt = opt.resume
        else:
            logdir = opt.resume.rstrip("/")
            ckpt = os.path.join(logdir, "checkpoints", "last.ckpt")
            if not os.path.isfile(ckpt):
                raise UserError(f"no checkpoint to resume at '{ckpt}'")
        base = sorted(glob.glob(os.path.join(logdir, "configs", "*-project.yaml")))
        if not base:
            raise UserError(f"no saved config in '{logdir}/configs' to resume from")
        # the run's lightning section (checkpoint period, trainer flags, image logger) is saved next to
        # the project config; without it a resumed run would checkpoint and export on other steps
        lightning = sorted(glob.glob(os.path.join(logdir, "configs", "*-lightning.yaml")))
        return logdir, ckpt, base[-1:] + lightning[-1:] + list(opt.base)
    if opt.log_folder:
        folder = opt.log_folder.strip("/")
        prefix = opt.logdir.strip("/") + "/"
        if folder.startswith(prefix):  # `-lf logs/x` with `-l logs` means logs/x, not logs/logs/x
            folder = folder[len(prefix):]
        return os.path.join(opt.logdir, folder), None, list(opt.base)
    if opt.name:
        name = "_" + opt.name
    elif opt.base:
        name = "_" + os.path.splitext(os.path.basename(opt.base[0]))[0]
    else:
        name = ""
    return os.path.join(opt.logdir, now + name + opt.postfix), None, list(opt.base)


def _accepts(target: str, key: str) -> bool:
    from ldm.util import get_obj_from_str

    try:
        params = inspect.signature(get_obj_from_str(target)).parameters
    except (ImportError, ValueError, TypeError):
        return False
    return key in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def inject_dataset(config, opt) -> tuple[str | None, str | None]:
    """Apply --mvtec_path/--category/--defect to every data split that takes them; returns (category, defect)."""
    data = config.get("data")
    if data is None:
        return None, None
    splits = [data.params[s] for s in ("train", "validation", "test") if s in data.get("params", {})]
    cfg_category = cfg_defect = None
    for split in splits:
        params = split.get("params", {})
        cfg_category = cfg_category or params.get("category")
        cfg_defect = cfg_defect or params.get("defect")
    category, defect, root = opt.category, opt.defect, None
    if opt.mvtec_path:
        from ldm.data.layouts import resolve_mvtec_path

        # the official form <root>/<category>/ground_truth/<defect>/ names them itself; only explicit
        # flags may contradict it, config values are mere defaults
        resolved = resolve_mvtec_path(opt.mvtec_path, category=category, defect=defect)
        root, category, defect = resolved[0], resolved[1] or category, resolved[2] or defect
    category = category or cfg_category
    defect = defect or cfg_defect
    for split in splits:
        if "params" not in split or split.params is None:
            split.params = {}
        for key, value in (("root", root), ("category", category), ("defect", defect)):
            if value is not None and (key in split.params or _accepts(split.target, key)):
                split.params[key] = [str(v) for v in value] if _is_list(value) else str(value)
    return category, defect


def _is_list(value) -> bool:
    """A list of defect types (``defect=[crack,scratch]``): kept a list, not written as its repr."""
    from omegaconf import ListConfig

    return isinstance(value, (list, tuple, ListConfig))


def configure_personalization(config, opt, category, defect) -> None:
    pc = config.model.params.get("personalization_config")
    if pc is None:
        if opt.init_word or opt.placeholder_string or opt.embedding_manager_ckpt:
            print("warning: --init_word/--placeholder_string/--embedding_manager_ckpt ignored: "
                  "the model config has no personalization_config")
        return
    pc.params = pc.get("params") or {}
    if opt.init_word:
        words = list(pc.params.get("initializer_words") or [])
        pc.params.initializer_words = [opt.init_word] + words[1:]
    if opt.placeholder_string:
        strings = list(pc.params.get("placeholder_strings") or ["*"])
        pc.params.placeholder_strings = [opt.placeholder_string] + strings[1:]
    if not pc.params.get("names") and category and defect and pc.params.get("per_name", True):
        pc.params.names = [f"{category}+{d}" for d in (defect if _is_list(defect) else [defect])]


def run(argv: list[str] | None = None):
    """Parse ``argv``, build everything, train/test; returns ``(trainer, model)``."""
    from datetime import datetime

    from ldm.trainer.options import TrainOptions
    from utils.options import options_from_args

    args, unknown = get_parser().parse_known_args(argv)
    opt = options_from_args(TrainOptions, args)
    overrides = split_overrides(unknown)
    if opt.name and opt.resume:
        raise UserError("-n/--name cannot be given with -r/--resume")
    if not opt.base and not opt.resume:
        raise UserError("give at least one config with -b/--base (or -r to resume)")
    for path in opt.base:
        if not os.path.isfile(path):
            raise UserError(f"config file not found: {path}")

    now = datetime.now().strftime("%Y-%m-%dT%H-%M-%S")
    logdir, resume_ckpt, base_configs = resolve_logdir(opt, now)
    from ldm.config_check import check_run

    check_run(opt, base_configs, overrides)  # bad YAML, keys, numbers, paths, --gpus: one line, before any build
    ckptdir = os.path.join(logdir, "checkpoints")
    cfgdir = os.path.join(logdir, "configs")

    import pytorch_lightning as pl
    import torch
    from omegaconf import OmegaConf
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from ldm.trainer.callbacks import ArtifactExporter, ImageLogger, RNGStateCallback, SetupCallback, TrainingProgress
    from ldm.trainer.devices import parse_gpus
    from ldm.util import instantiate_from_config

    if opt.threads < 0:
        raise UserError(f"--threads must be >= 0, got {opt.threads}")
    if opt.threads:
        torch.set_num_threads(opt.threads)
    silence_expected_warnings()
    pl.seed_everything(opt.seed, workers=True)
    configs = [OmegaConf.load(c) for c in base_configs]
    config = OmegaConf.merge(*configs, OmegaConf.from_dotlist(overrides))
    if "model" not in config:
        raise UserError(f"no 'model' section in {base_configs}")
    lightning_config = config.pop("lightning", OmegaConf.create())
    trainer_config = OmegaConf.to_container(lightning_config.get("trainer", OmegaConf.create()), resolve=True)
    if opt.max_steps is not None:
        trainer_config["max_steps"] = opt.max_steps

    devices = parse_gpus(opt.gpus if opt.gpus is not None else trainer_config.pop("gpus", None))
    trainer_config.pop("gpus", None)
    for key in ("accelerator", "devices", "strategy"):
        trainer_config.pop(key, None)
    precision = str(trainer_config.pop("precision", "32-true"))
    if opt.precision is not None:  # --precision bf16: Lightning's bf16-mixed (utils.acceleration)
        precision = Acceleration(opt.precision).lightning_precision
    if devices.accelerator == "cpu" and precision in ("16", "16-mixed"):
        print(f"warning: precision {precision} needs a GPU; using 32-true on the CPU")
        precision = "32-true"
    # Lightning's bar redraws one line with carriage returns: right on a terminal, noise in a log file;
    # elsewhere TrainingProgress prints a plain line every 10 % (unless the config decides)
    interactive = sys.stderr.isatty()
    progress_bar = bool(trainer_config.get("enable_progress_bar", interactive))
    lightning_config.trainer = dict(trainer_config, precision=precision, accelerator=devices.accelerator)

    category, defect = inject_dataset(config, opt)
    configure_personalization(config, opt, category, defect)
    if opt.actual_resume:
        if not os.path.isfile(opt.actual_resume):
            raise UserError(f"--actual_resume checkpoint not found: {opt.actual_resume}")
        config.model.params.ckpt_path = opt.actual_resume

    model = instantiate_from_config(config.model)
    if opt.embedding_manager_ckpt:
        if getattr(model, "embedding_manager", None) is None:
            raise UserError("--embedding_manager_ckpt given but the model has no embedding manager")
        model.embedding_manager.load(opt.embedding_manager_ckpt)

    data = instantiate_from_config(config.data)
    data.prepare_data()
    data.setup("fit")

    every_n = int(lightning_config.get("modelcheckpoint", {}).get("params", {}).get("every_n_train_steps", 500))
    ckpt_params = dict(dirpath=ckptdir, filename="{epoch:06}-{step:09}", save_last=True, save_top_k=-1,
                       every_n_train_steps=every_n)
    ckpt_params.update({k: v for k, v in OmegaConf.to_container(
        lightning_config.get("modelcheckpoint", {}).get("params", OmegaConf.create()), resolve=True).items()})
    logger = CSVLogger(save_dir=logdir, name="csv", version="")
    image_cfg = OmegaConf.to_container(lightning_config.get("callbacks", {}).get("image_logger", {}).get(
        "params", OmegaConf.create()), resolve=True) if "callbacks" in lightning_config else {}
    callbacks = [
        RNGStateCallback(),  # first: restores the random stream before any other batch hook runs
        SetupCallback(bool(opt.resume), now, logdir, ckptdir, cfgdir, config, lightning_config),
        ImageLogger(save_dir=logdir, **image_cfg),
        checkpointer := ModelCheckpoint(**ckpt_params),
        ArtifactExporter(ckptdir, every_n),
        LearningRateMonitor(logging_interval="step"),
        TrainingProgress(logdir, lines=not interactive),
    ]
    trainer = pl.Trainer(devices=devices.devices, strategy=devices.strategy, logger=logger, callbacks=callbacks,
                         default_root_dir=logdir, **dict(lightning_config.trainer, enable_progress_bar=progress_bar))

    bs = int(config.data.params.batch_size)
    base_lr = float(config.model.get("base_learning_rate", 1e-4))
    accumulate = int(trainer_config.get("accumulate_grad_batches", 1) or 1)
    ngpu = devices.num_devices if devices.accelerator == "gpu" else 1
    if opt.scale_lr:
        model.learning_rate = accumulate * ngpu * bs * base_lr
        print(f"Setting learning rate to {model.learning_rate:.2e} = {accumulate} (accumulate_grad_batches) * "
              f"{ngpu} (num_gpus) * {bs} (batchsize) * {base_lr:.2e} (base_lr)")
    else:
        model.learning_rate = base_lr
        print(f"++++ NOT USING LR SCALING ++++\nSetting learning rate to {model.learning_rate:.2e}")

    if opt.train:
        trainer.fit(model, data, ckpt_path=resume_ckpt)
        if not trainer.interrupted:
            save_final_checkpoint(trainer, checkpointer, ckptdir)
    if not opt.no_test and not trainer.interrupted and _has_test(model, data):
        trainer.test(model, data)
    return trainer, model


def save_final_checkpoint(trainer, checkpointer, ckptdir: str) -> None:
    """The last step is always in ``last.ckpt``: ``every_n_train_steps`` alone would leave the final
    ``max_steps % every_n`` steps unsaved (a 250-step run kept its 200-step weights, and the next stage
    silently used them)."""
    step = int(trainer.global_step)
    if step == 0 or getattr(checkpointer, "_last_global_step_saved", None) == step:
        return
    trainer.save_checkpoint(os.path.join(ckptdir, f"epoch={trainer.current_epoch:06}-step={step:09}.ckpt"))
    trainer.save_checkpoint(os.path.join(ckptdir, "last.ckpt"))


def main(argv: list[str] | None = None) -> int:
    run(argv)
    return 0


def _has_test(model, data) -> bool:
    import pytorch_lightning as pl

    overrides_test = type(model).test_step is not pl.LightningModule.test_step
    return overrides_test and getattr(data, "has_test", False)


def cli() -> int:
    """Console entry point (``pip install -e .`` installs it)."""
    from utils.cli import run_cli

    return run_cli("main.py", main)


if __name__ == "__main__":
    sys.exit(cli())
