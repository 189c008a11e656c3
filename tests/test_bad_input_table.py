"""Every front door refuses bad input in one line (issue 25): a table of bad inputs per command.

Commands: ``main.py``, ``generate_with_mask.py``, ``scripts/train_all.py``, ``scripts/compare_synthesizers.py``,
``scripts/export_pairs.py``, ``scripts/train_segmenter.py`` and ``scripts/studio.py`` (startup only: the
server is never started). Each case asserts exit code 2, exactly one line on stderr that starts with
``<command>: error:`` and names the culprit (file, key or flag), no traceback, and nothing written: every
file and folder of the case's scratch folder (where the outputs and log folders go) is as it was before
the call -- an output folder that did not exist still does not, an existing one is unchanged.

Commands are called in-process the way their ``__main__`` calls them (``utils.cli.run_cli``; a script's is
the ``cli(argv)`` of the library module it runs); a few cases also run as real processes. ``main.py`` cases
fail in ``ldm.config_check`` before anything is built.
The older ``tests/test_bad_input.py`` covers the dataset loaders, checkpoints and full/read-only disks.
"""
from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import pytest
import yaml

from tests.fixtures_data import make_mvtec
from tests.run_fixture import gen_args, make_dataset, make_run
from tests.test_export import build_pairs
from tests.tiny_configs import ldm_config
from utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _entry(module: str):
    """The library command a script runs: ``cli(argv)`` (one-line user errors, exit code 2)."""
    return importlib.import_module(module).cli


def _server_started(*a, **k):
    raise AssertionError("studio.py started its server for bad input")


def _spawned(*a, **k):
    raise AssertionError(f"train_all.py started a training run for bad input: {a}")


ENTRY: dict[str, Callable[[list], int]] = {
    "main.py": lambda argv: run_cli("main.py", lambda: importlib.import_module("main").main(argv)),
    "generate_with_mask.py": lambda argv: run_cli(
        "generate_with_mask.py", lambda: importlib.import_module("generate_with_mask").main(argv) and 0),
    "train_all.py": lambda argv: _entry("ldm.train_all")(argv),
    "compare_synthesizers.py": lambda argv: _entry("ldm.segmentation.compare")(argv),
    "export_pairs.py": lambda argv: _entry("ldm.export")(argv),
    "train_segmenter.py": lambda argv: _entry("ldm.segmentation.train_on_pairs")(argv),
    "studio.py": lambda argv: _entry("ldm.studio.cli")(argv),
}


@dataclass
class World:
    tmp: Path        # this case's scratch folder: outputs and log folders go here; checked unchanged
    data: Path       # texture-ad with a trained run (generate_with_mask.py, studio.py)
    ckdir: Path      # that run's checkpoints/
    run: Path        # that run's folder
    mvtec: Path      # an MVTec-like tree: bottle (broken_large, contamination), grid (bent)
    pairs: Path      # an export pairs root: widget (crack, stain), gadget (dent)
    segpairs: Path   # generated pairs for mvtec bottle/broken_large (train_segmenter.py)

    @property
    def out(self) -> Path:
        return self.tmp / "out"


@dataclass
class Case:
    name: str
    entry: str
    argv: Callable[[World], list]        # may write input files into w.tmp before returning argv
    expect: tuple                        # substrings of the one error line (the file, key or flag)
    patch: Optional[Callable] = None     # (world, monkeypatch) -> None: simulate the machine


def C(name, entry, argv, *expect, patch=None) -> Case:
    return Case(name, entry, argv, tuple(expect), patch)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    work = tmp_path_factory.mktemp("table")
    data = make_dataset(work / "texture-ad")
    ckdir = make_run(work, data)
    mvtec = make_mvtec(work / "mvtec")
    pairs = work / "pairs" / "fast"
    build_pairs(pairs)
    segpairs = work / "segpairs"
    shutil.copytree(pairs / "widget" / "crack", segpairs / "bottle" / "broken_large")
    return World(work, data, ckdir, ckdir.parent, mvtec, pairs, segpairs)


@pytest.fixture
def world(base, tmp_path):
    return World(tmp_path, base.data, base.ckdir, base.run, base.mvtec, base.pairs, base.segpairs)


# ------------------------------------------------------------------------------------------ helpers
def _w(w: World, name: str, text: str | bytes = "x") -> Path:
    """A file ``name`` in the scratch folder holding ``text``."""
    p = w.tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def _d(w: World, name: str) -> Path:
    """An empty folder ``name`` in the scratch folder."""
    p = w.tmp / name
    p.mkdir(parents=True, exist_ok=True)
    return p


def _with(args: list, flag: str, value: str) -> list:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _no_cuda(w, mp):
    import torch

    mp.setattr(torch.cuda, "is_available", lambda: False)
    mp.setattr(torch.cuda, "device_count", lambda: 0)


def _two_gpus(w, mp):
    import torch

    mp.setattr(torch.cuda, "is_available", lambda: True)
    mp.setattr(torch.cuda, "device_count", lambda: 2)


# main.py: a tiny LDM on the MVTec tree (size 16: 4 latent cells, the autoencoder halves twice, the UNet once)
def _cfg(w: World, name: str = "cfg.yaml", drop: str = "", **train) -> Path:
    params = {"root": str(w.mvtec), "category": "bottle", "defect": "broken_large", "size": 16}
    params.update(train)
    cfg = {"model": ldm_config(), "data": {"target": "ldm.data.datamodule.DataModuleFromConfig",
                                           "params": {"batch_size": 2, "num_workers": 0,
                                                      "train": {"target": "ldm.data.anomaly.AnomalyDataset",
                                                                "params": params}}},
           "lightning": {"trainer": {"max_steps": 1}}}
    cfg.pop(drop, None)
    path = w.tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _main(w: World, *extra, cfg: Optional[Path] = None, gpus: str = "none") -> list:
    return ["--base", str(cfg or _cfg(w)), "-t", "-l", str(w.out), "-lf", "run", "--gpus", gpus, *extra]


def _yaml(w: World, name: str, text: str) -> list:
    return _main(w, cfg=_w(w, name, text))


def _resume_run(w: World) -> Path:
    """A run folder main.py -r accepts (saved config + last.ckpt); the case checks it stays unchanged."""
    run = w.out / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    (run / "configs").mkdir()
    shutil.copy(_cfg(w), run / "configs" / "now-project.yaml")
    return run


MAIN = [
    # the three: a tab in the indentation, a list at the top level, --max_steps -5
    C("yaml_tab_in_indentation", "main.py",
      lambda w: _yaml(w, "tab.yaml", "model:\n  target: x\ndata:\n\tparams: {}\n"), "tab.yaml", "line 4", "tab"),
    C("yaml_top_level_list", "main.py", lambda w: _yaml(w, "list.yaml", "- model\n- data\n"), "list.yaml", "mapping"),
    C("max_steps_negative", "main.py", lambda w: _main(w, "--max_steps", "-5"), "--max_steps", "-5"),
    # YAML files
    C("yaml_unclosed_bracket", "main.py", lambda w: _yaml(w, "bracket.yaml", "model: {target: [x\n"), "bracket.yaml",
      "line"),
    C("yaml_duplicate_key", "main.py", lambda w: _yaml(w, "dup.yaml", "model: {}\ndata: {}\nmodel: {}\n"), "dup.yaml",
      "line 3", "duplicate key"),
    C("yaml_top_level_scalar", "main.py", lambda w: _yaml(w, "scalar.yaml", "42\n"), "scalar.yaml", "mapping"),
    C("yaml_not_text", "main.py", lambda w: _main(w, cfg=_w(w, "binary.yaml", b"\xff\xfe\x00\x81")), "binary.yaml"),
    C("no_model_section", "main.py", lambda w: _main(w, cfg=_cfg(w, drop="model")), "'model' section"),
    C("no_data_section", "main.py", lambda w: _main(w, cfg=_cfg(w, drop="data")), "'data' section"),
    C("model_not_a_mapping", "main.py", lambda w: _main(w, "model=3"), "model:", "mapping"),
    # overrides
    C("override_does_not_parse", "main.py", lambda w: _main(w, "model.params.timesteps=[1,2"),
      "model.params.timesteps=[1,2"),
    C("override_empty_key", "main.py", lambda w: _main(w, "=3"), "'=3'", "empty key"),
    C("override_missing_interpolation", "main.py", lambda w: _main(w, "model.params.timesteps=${nope}"),
      "model.params.timesteps", "nope"),
    # targets
    C("model_target_not_importable", "main.py",
      lambda w: _main(w, "model.target=ldm.models.diffusion.ddpm.LatentDifusion"), "model.target", "LatentDifusion"),
    C("nested_target_not_importable", "main.py", lambda w: _main(w, "model.params.unet_config.target=ldm.nope.UNet"),
      "model.params.unet_config.target", "ldm.nope"),
    C("data_target_not_importable", "main.py",
      lambda w: _main(w, "data.params.train.target=ldm.data.anomaly.AnomalySet"), "data.params.train.target"),
    C("target_not_dotted", "main.py", lambda w: _main(w, "model.target=LatentDiffusion"), "model.target"),
    # numbers
    C("max_steps_zero_in_config", "main.py", lambda w: _main(w, "lightning.trainer.max_steps=0"),
      "lightning.trainer.max_steps"),
    C("max_steps_on_resume", "main.py", lambda w: ["-r", str(_resume_run(w)), "-t", "--max_steps", "-2",
                                                    "--gpus", "none"], "--max_steps"),
    C("batch_size_zero", "main.py", lambda w: _main(w, "data.params.batch_size=0"), "data.params.batch_size"),
    C("batch_size_not_a_number", "main.py", lambda w: _main(w, "data.params.batch_size=eight"),
      "data.params.batch_size", "eight"),
    C("learning_rate_negative", "main.py", lambda w: _main(w, "model.base_learning_rate=-1e-4"),
      "model.base_learning_rate"),
    C("learning_rate_not_a_number", "main.py", lambda w: _main(w, "model.base_learning_rate=fast"),
      "model.base_learning_rate"),
    C("accumulate_grad_batches_zero", "main.py", lambda w: _main(w, "lightning.trainer.accumulate_grad_batches=0"),
      "lightning.trainer.accumulate_grad_batches"),
    C("seed_out_of_range", "main.py", lambda w: _main(w, "-s", "-1"), "--seed"),
    C("threads_negative", "main.py", lambda w: _main(w, "--threads", "-2"), "--threads"),
    C("image_size_vs_autoencoder", "main.py", lambda w: _main(w, "data.params.train.params.size=30"),
      "data.params.train.params.size", "ch_mult"),
    C("image_size_vs_unet", "main.py", lambda w: _main(w, "data.params.train.params.size=36"),
      "data.params.train.params.size", "channel_mult"),
    C("image_size_zero", "main.py", lambda w: _main(w, "data.params.train.params.size=0"),
      "data.params.train.params.size"),
    # paths
    C("data_root_missing", "main.py", lambda w: _main(w, cfg=_cfg(w, root=str(w.tmp / "nowhere"))),
      "data.params.train.params.root", "nowhere"),
    C("data_root_empty", "main.py", lambda w: _main(w, cfg=_cfg(w, root=str(_d(w, "vacant")))),
      "data.params.train.params.root", "vacant"),
    C("mvtec_path_missing", "main.py", lambda w: _main(w, "--mvtec_path", str(w.tmp / "no_mvtec")), "--mvtec_path",
      "no_mvtec"),
    C("first_stage_checkpoint_missing", "main.py",
      lambda w: _main(w, f"model.params.first_stage_config.params.ckpt_path={w.tmp / 'ae.ckpt'}"),
      "model.params.first_stage_config.params.ckpt_path", "ae.ckpt"),
    C("embedding_manager_ckpt_missing", "main.py",
      lambda w: _main(w, "--embedding_manager_ckpt", str(w.tmp / "emb.pt")), "--embedding_manager_ckpt", "emb.pt"),
    # the machine
    C("gpu_on_a_machine_without_cuda", "main.py", lambda w: _main(w, gpus="0,"), "--gpus", "no cuda", patch=_no_cuda),
    C("all_gpus_on_a_machine_without_cuda", "main.py", lambda w: _main(w, gpus="-1"), "--gpus", patch=_no_cuda),
    C("gpu_that_does_not_exist", "main.py", lambda w: _main(w, gpus="0,3"), "--gpus", "[3]", patch=_two_gpus),
    C("config_gpus_without_cuda", "main.py",
      lambda w: ["--base", str(_cfg(w)), "-t", "-l", str(w.out), "-lf", "run", "lightning.trainer.gpus=0"],
      "lightning.trainer.gpus", patch=_no_cuda),
]


# generate_with_mask.py (its bad --pt_path/--weight_idx/... are in tests/test_bad_input.py)
def _gen(w: World, *extra) -> list:
    return gen_args(w.data, w.ckdir, w.out, "--n_samples", "2", *extra)


GEN = [
    C("data_root_missing", "generate_with_mask.py", lambda w: _with(_gen(w), "--data_root", str(w.tmp / "nodata")),
      "--data_root", "nodata"),
    C("data_root_empty", "generate_with_mask.py", lambda w: _with(_gen(w), "--data_root", str(_d(w, "vacant"))),
      "--data_root", "vacant"),
    C("sample_name_unknown", "generate_with_mask.py", lambda w: _with(_gen(w), "--sample_name", "bricks"),
      "bricks+scratch"),
    C("mask_path_missing", "generate_with_mask.py", lambda w: _with(_gen(w), "--mask_path", str(w.tmp / "nomasks")),
      "--mask_path", "nomasks"),
    C("mask_path_empty", "generate_with_mask.py", lambda w: _with(_gen(w), "--mask_path", str(_d(w, "nomask"))),
      "nomask"),
    C("steps_zero", "generate_with_mask.py", lambda w: _with(_gen(w), "--steps", "0"), "--steps"),
    C("refine_steps_negative", "generate_with_mask.py", lambda w: _gen(w, "--refine_steps", "-1"), "refine_steps"),
    C("seed_negative", "generate_with_mask.py", lambda w: _gen(w, "--seed", "-1"), "--seed"),
    C("t_start_negative", "generate_with_mask.py", lambda w: _gen(w, "--t_start", "-1"), "t_start"),
    C("guidance_scale_negative", "generate_with_mask.py", lambda w: _gen(w, "--guidance_scale", "-2"),
      "--guidance_scale", "-2"),
    C("config_missing", "generate_with_mask.py", lambda w: _gen(w, "--config", str(w.tmp / "model.yaml")),
      "--config", "model.yaml"),
    C("config_without_model", "generate_with_mask.py",
      lambda w: _gen(w, "--config", str(_w(w, "nomodel.yaml", "data: {}\n"))), "nomodel.yaml", "model"),
    C("backbone_not_a_checkpoint", "generate_with_mask.py", lambda w: _gen(w, "--ckpt", str(_w(w, "notes.ckpt"))),
      "notes.ckpt"),
    C("pt_path_is_a_file", "generate_with_mask.py", lambda w: _with(_gen(w), "--pt_path", str(_w(w, "ck.txt"))),
      "--pt_path"),
    C("pt_path_without_saved_config", "generate_with_mask.py",
      lambda w: _with(_gen(w), "--pt_path", str(_d(w, "bare/checkpoints"))), "--config"),
    C("fg_min_share_out_of_range", "generate_with_mask.py", lambda w: _gen(w, "--fg_min_share", "2"),
      "--fg_min_share"),
    C("native_margin_negative", "generate_with_mask.py", lambda w: _gen(w, "--native_margin", "-1"),
      "--native_margin"),
    C("pairs_csv_missing", "generate_with_mask.py", lambda w: _gen(w, "--pairs_csv", str(w.tmp / "plan.csv")),
      "--pairs_csv", "plan.csv"),
    C("pairs_csv_without_columns", "generate_with_mask.py",
      lambda w: _gen(w, "--pairs_csv", str(_w(w, "cols.csv", "foo,bar\n1,2\n"))), "cols.csv", "normal_image"),
    C("generated_masks_without_mask_model", "generate_with_mask.py", lambda w: _gen(w, "--mask_source", "generated"),
      "--mask_model"),
    C("mask_model_missing", "generate_with_mask.py",
      lambda w: _gen(w, "--mask_source", "generated", "--mask_model", str(w.tmp / "maskrun")), "--mask_model",
      "maskrun"),
    C("layout_unknown", "generate_with_mask.py", lambda w: _gen(w, "--layout", "mvtek"), "mvtek"),
    C("ndi_off_with_t_start", "generate_with_mask.py", lambda w: _gen(w, "--ndi", "off", "--t_start", "10"),
      "--ndi off", "--t_start"),
    C("kernel_unknown", "generate_with_mask.py", lambda w: _gen(w, "--kernel", "gauss"), "--kernel", "gauss"),
    C("steps_not_a_number", "generate_with_mask.py", lambda w: _with(_gen(w), "--steps", "many"), "--steps"),
    C("device_not_a_device", "generate_with_mask.py", lambda w: _with(_gen(w), "--device", "gpu"), "--device", "gpu"),
    C("eta_nan", "generate_with_mask.py", lambda w: _gen(w, "--eta", "nan"), "--eta"),
    C("mask_steps_zero", "generate_with_mask.py", lambda w: _gen(w, "--mask_steps", "0"), "--mask_steps"),
    C("fg_dir_missing", "generate_with_mask.py", lambda w: _gen(w, "--fg_dir", str(w.tmp / "fgs")), "--fg_dir", "fgs"),
    C("batch_size_zero", "generate_with_mask.py", lambda w: _gen(w, "--batch_size", "0"), "--batch_size"),
    C("precision_unknown", "generate_with_mask.py", lambda w: _gen(w, "--precision", "fp16"), "--precision", "fp16"),
]


# scripts/train_all.py (training runs are never started: subprocess.call fails the test)
CONFIG = "configs/fast/mvtec.yaml"


def _all(w: World, *extra, config: str = CONFIG, dataset: Optional[Path] = None, dry: bool = True) -> list:
    return ["--config", str(config), "--dataset", str(dataset or w.mvtec), "--logdir", str(w.out),
            *(["--dry_run"] if dry else []), *extra]


def _finished_logdir(w: World) -> list:
    done = w.out / "bottle+contamination" / "checkpoints"
    done.mkdir(parents=True)
    (done / "last.ckpt").write_bytes(b"weights")
    return _all(w, "data.params.batch_size=-1", dry=False)


ALL = [
    C("config_tab_in_indentation", "train_all.py",
      lambda w: _all(w, config=_w(w, "tab.yaml", "model:\n\ttarget: x\n")), "tab.yaml", "line 2"),
    C("config_top_level_list", "train_all.py", lambda w: _all(w, config=_w(w, "list.yaml", "- a\n")), "list.yaml",
      "mapping"),
    C("config_without_data", "train_all.py",
      lambda w: _all(w, config=_w(w, "nodata.yaml", "model:\n  target: ldm.models.diffusion.fast.FAST\n")),
      "'data' section"),
    C("config_missing", "train_all.py", lambda w: _all(w, config=w.tmp / "fast.yaml"), "fast.yaml"),
    C("dataset_missing", "train_all.py", lambda w: _all(w, dataset=w.tmp / "nodataset"), "nodataset"),
    C("dataset_empty", "train_all.py", lambda w: _all(w, dataset=_d(w, "vacant")), "vacant"),
    C("category_unknown", "train_all.py", lambda w: _all(w, "--categories", "bottel"), "bottel"),
    C("category_empty_name", "train_all.py", lambda w: _all(w, "--categories", "bottle,"), "--categories"),
    C("defect_unknown", "train_all.py", lambda w: _all(w, "--defects", "holes"), "holes"),
    C("layout_unknown", "train_all.py", lambda w: _all(w, "--layout", "mvtek"), "mvtek"),
    C("gpus_malformed", "train_all.py", lambda w: _all(w, "--gpus", "first"), "--gpus"),
    C("gpu_on_a_machine_without_cuda", "train_all.py", lambda w: _all(w, "--gpus", "0,", dry=False), "--gpus",
      patch=_no_cuda),
    C("backbone_missing", "train_all.py", lambda w: _all(w, "--ckpt", str(w.tmp / "text2img.ckpt"), dry=False),
      "--ckpt", "text2img.ckpt"),
    C("seed_not_a_number", "train_all.py", lambda w: _all(w, "--seed", "x"), "--seed"),
    C("seed_negative", "train_all.py", lambda w: _all(w, "--seed", "-1"), "--seed"),
    C("override_without_value", "train_all.py", lambda w: _all(w, "model.params.foo"), "model.params.foo"),
    C("override_max_steps_negative", "train_all.py", lambda w: _all(w, "lightning.trainer.max_steps=-5"),
      "lightning.trainer.max_steps"),
    C("override_target_not_importable", "train_all.py", lambda w: _all(w, "model.target=ldm.models.FASTER"),
      "model.target"),
    C("logdir_is_a_file", "train_all.py", lambda w: _with(_all(w), "--logdir", str(_w(w, "logs.txt"))), "--logdir"),
    C("finished_runs_untouched", "train_all.py", _finished_logdir, "data.params.batch_size"),
]


# scripts/compare_synthesizers.py (the cheap "normal" synthesizer; every case fails before any training)
def _cmp(w: World, *extra) -> list:
    return ["--dataset_root", str(w.mvtec), "--layout", "mvtec", "--synthesizers", "normal", "--categories", "bottle",
            "--out", str(w.out), "--steps", "2", "--size", "16", "--n_samples", "1", "--device", "cpu", "--quiet",
            *extra]


CMP = [
    C("dataset_root_missing", "compare_synthesizers.py",
      lambda w: _with(_cmp(w), "--dataset_root", str(w.tmp / "nodataset")), "--dataset_root", "nodataset"),
    C("dataset_root_empty", "compare_synthesizers.py",
      lambda w: _with(_cmp(w), "--dataset_root", str(_d(w, "vacant"))), "--dataset_root", "vacant"),
    C("layout_unknown", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--layout", "mvtek"), "mvtek"),
    C("synthesizer_unknown", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--synthesizers", "normal,stable"),
      "--synthesizers", "stable"),
    C("synthesizers_empty", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--synthesizers", ","),
      "--synthesizers"),
    C("category_unknown", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--categories", "bottel"),
      "--categories", "bottel"),
    C("n_samples_zero", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--n_samples", "0"), "--n_samples"),
    C("steps_zero", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--steps", "0"), "--steps"),
    C("batch_size_zero", "compare_synthesizers.py", lambda w: _cmp(w, "--batch_size", "0"), "--batch_size"),
    C("size_zero", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--size", "0"), "--size"),
    C("lr_zero", "compare_synthesizers.py", lambda w: _cmp(w, "--lr", "0"), "--lr"),
    C("val_fraction_above_one", "compare_synthesizers.py", lambda w: _cmp(w, "--val_fraction", "2"),
      "--val_fraction"),
    C("normal_ratio_negative", "compare_synthesizers.py", lambda w: _cmp(w, "--normal_ratio", "-1"),
      "--normal_ratio"),
    C("examples_negative", "compare_synthesizers.py", lambda w: _cmp(w, "--examples", "-2"), "--examples"),
    C("threads_negative", "compare_synthesizers.py", lambda w: _cmp(w, "--threads", "-1"), "--threads"),
    C("device_unknown", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--device", "gpu"), "--device", "gpu"),
    C("device_cuda_without_cuda", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--device", "cuda"),
      "--device", patch=_no_cuda),
    C("fast_dir_missing", "compare_synthesizers.py",
      lambda w: _with(_cmp(w, "--fast_dir", str(w.tmp / "fastpairs")), "--synthesizers", "fast,normal"),
      "--fast_dir", "fastpairs"),
    C("generated_dir_missing", "compare_synthesizers.py",
      lambda w: _with(_cmp(w, "--generated", f"mine={w.tmp / 'minepairs'}"), "--synthesizers", "mine"),
      "--generated mine=", "minepairs"),
    C("generated_without_dir", "compare_synthesizers.py", lambda w: _cmp(w, "--generated", "mine"), "--generated"),
    C("texture_dir_missing", "compare_synthesizers.py",
      lambda w: _with(_cmp(w, "--texture_dir", str(w.tmp / "dtd")), "--synthesizers", "draem"), "--texture_dir",
      "dtd"),
    C("mask_source_unknown", "compare_synthesizers.py", lambda w: _cmp(w, "--mask_source", "random"),
      "--mask_source"),
    C("out_is_a_file", "compare_synthesizers.py", lambda w: _with(_cmp(w), "--out", str(_w(w, "report.txt"))),
      "report.txt"),
]


# scripts/export_pairs.py
def _exp(w: World, *extra, pairs: Optional[Path] = None, fmt: str = "mvtec") -> list:
    return ["--pairs", str(pairs or w.pairs), "--format", fmt, "--out", str(w.out), *extra]


def _pairs_copy(w: World, name: str, with_csv: bool = True) -> Path:
    root = w.tmp / name / "fast"
    build_pairs(root, with_csv=with_csv)
    return root


def _truncated_pair(w: World) -> list:
    root = _pairs_copy(w, "trunc")
    (root / "widget" / "crack" / "image" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    return _exp(w, pairs=root)


def _full_out(w: World) -> list:
    _w(w, "out/keep.txt", "an earlier export")
    return _exp(w)


EXP = [
    C("pairs_missing", "export_pairs.py", lambda w: _exp(w, pairs=w.tmp / "nopairs"), "nopairs"),
    C("pairs_empty", "export_pairs.py", lambda w: _exp(w, pairs=_d(w, "vacant")), "vacant"),
    C("pairs_is_a_file", "export_pairs.py", lambda w: _exp(w, pairs=_w(w, "pairs.txt")), "pairs.txt"),
    C("format_unknown", "export_pairs.py", lambda w: _exp(w, fmt="coco"), "--format", "coco"),
    C("out_is_a_file", "export_pairs.py", lambda w: _with(_exp(w), "--out", str(_w(w, "export.txt"))), "--out",
      "export.txt"),
    C("out_not_empty", "export_pairs.py", _full_out, "--out", "--overwrite"),
    C("out_inside_pairs", "export_pairs.py", lambda w: _with(_exp(w), "--out", str(w.pairs / "widget" / "export")),
      "--out"),
    C("val_fraction_one_or_more", "export_pairs.py", lambda w: _exp(w, "--val_fraction", "1.5"), "--val_fraction"),
    C("val_fraction_negative", "export_pairs.py", lambda w: _exp(w, "--val_fraction", "-0.1"), "--val_fraction"),
    C("keep_top_zero", "export_pairs.py", lambda w: _exp(w, "--keep_top", "0"), "--keep_top"),
    C("min_score_nan", "export_pairs.py", lambda w: _exp(w, "--min_score", "nan"), "--min_score"),
    C("min_score_without_scores", "export_pairs.py",
      lambda w: _exp(w, "--min_score", "0.1", pairs=_pairs_copy(w, "noscores", with_csv=False)), "--min_score",
      "pairs.csv"),
    C("normal_dir_missing", "export_pairs.py", lambda w: _exp(w, "--normal_dir", str(w.tmp / "normals")),
      "--normal_dir", "normals"),
    C("normal_dir_empty", "export_pairs.py", lambda w: _exp(w, "--normal_dir", str(_d(w, "vacant"))),
      "--normal_dir", "vacant"),
    C("category_unknown", "export_pairs.py", lambda w: _exp(w, "--categories", "gizmo"), "--categories", "gizmo"),
    C("defect_unknown", "export_pairs.py", lambda w: _exp(w, "--defects", "hole"), "--defects", "hole"),
    C("truncated_image", "export_pairs.py", _truncated_pair, "3.png"),
    C("seed_not_a_number", "export_pairs.py", lambda w: _exp(w, "--seed", "x"), "--seed"),
]


# scripts/train_segmenter.py
def _seg(w: World, *extra) -> list:
    return ["--pairs", str(w.segpairs), "--dataset_root", str(w.mvtec), "--category", "bottle", "--out", str(w.out),
            "--steps", "2", "--size", "16", "--device", "cpu", *extra]


def _earlier_result(w: World) -> list:
    _w(w, "out/metrics.json", '{"an": "earlier run"}')
    return _seg(w, "--lr", "-1")


SEG = [
    C("pairs_missing", "train_segmenter.py", lambda w: _with(_seg(w), "--pairs", str(w.tmp / "nopairs")), "nopairs"),
    C("pairs_empty", "train_segmenter.py", lambda w: _with(_seg(w), "--pairs", str(_d(w, "vacant"))), "--pairs",
      "vacant"),
    C("dataset_root_missing", "train_segmenter.py",
      lambda w: _with(_seg(w), "--dataset_root", str(w.tmp / "nodataset")), "nodataset"),
    C("category_unknown", "train_segmenter.py", lambda w: _with(_seg(w), "--category", "bottel"), "bottel"),
    C("category_without_pairs", "train_segmenter.py", lambda w: _with(_seg(w), "--category", "grid"), "--pairs",
      "grid"),
    C("layout_unknown", "train_segmenter.py", lambda w: _seg(w, "--layout", "mvtek"), "mvtek"),
    C("arch_unknown", "train_segmenter.py", lambda w: _seg(w, "--arch", "resnet"), "--arch", "resnet"),
    C("steps_zero", "train_segmenter.py", lambda w: _with(_seg(w), "--steps", "0"), "--steps"),
    C("steps_negative", "train_segmenter.py", lambda w: _with(_seg(w), "--steps", "-1"), "--steps"),
    C("batch_size_zero", "train_segmenter.py", lambda w: _seg(w, "--batch_size", "0"), "--batch_size"),
    C("lr_negative", "train_segmenter.py", lambda w: _seg(w, "--lr", "-1"), "--lr"),
    C("lr_nan", "train_segmenter.py", lambda w: _seg(w, "--lr", "nan"), "--lr"),
    C("size_zero", "train_segmenter.py", lambda w: _with(_seg(w), "--size", "0"), "--size"),
    C("normal_ratio_above_one", "train_segmenter.py", lambda w: _seg(w, "--normal_ratio", "1.5"), "--normal_ratio"),
    C("val_fraction_one", "train_segmenter.py", lambda w: _seg(w, "--val_fraction", "1.0"), "--val_fraction"),
    C("val_fraction_negative", "train_segmenter.py", lambda w: _seg(w, "--val_fraction", "-0.5"), "--val_fraction"),
    C("val_every_negative", "train_segmenter.py", lambda w: _seg(w, "--val_every", "-1"), "--val_every"),
    C("num_workers_negative", "train_segmenter.py", lambda w: _seg(w, "--num_workers", "-1"), "--num_workers"),
    C("threads_negative", "train_segmenter.py", lambda w: _seg(w, "--threads", "-1"), "--threads"),
    C("examples_negative", "train_segmenter.py", lambda w: _seg(w, "--examples", "-1"), "--examples"),
    C("base_channels_zero", "train_segmenter.py", lambda w: _seg(w, "--base_channels", "0"), "--base_channels"),
    C("device_unknown", "train_segmenter.py", lambda w: _with(_seg(w), "--device", "gpu"), "--device", "gpu"),
    C("device_cuda_without_cuda", "train_segmenter.py", lambda w: _with(_seg(w), "--device", "cuda"), "--device",
      patch=_no_cuda),
    C("device_gpu_that_does_not_exist", "train_segmenter.py", lambda w: _with(_seg(w), "--device", "cuda:5"),
      "--device", "cuda:5", patch=_two_gpus),
    C("segformer_dir_without_segformer", "train_segmenter.py",
      lambda w: _seg(w, "--segformer_dir", str(_d(w, "weights"))), "--segformer_dir"),
    C("segformer_dir_without_config", "train_segmenter.py",
      lambda w: _seg(w, "--arch", "segformer-tiny", "--segformer_dir", str(_d(w, "weights"))), "--segformer_dir",
      "config.json"),
    C("out_is_a_file", "train_segmenter.py", lambda w: _with(_seg(w), "--out", str(_w(w, "seg.txt"))), "seg.txt"),
    C("earlier_result_untouched", "train_segmenter.py", _earlier_result, "--lr"),
]


# scripts/studio.py: startup only; the server never starts (launch fails the test)
def _studio(w: World, *extra) -> list:
    return ["--run", str(w.run), "--out", str(w.out), "--device", "cpu", *extra]


STUDIO = [
    C("run_missing", "studio.py", lambda w: _with(_studio(w), "--run", str(w.tmp / "norun")), "--run", "norun"),
    C("run_is_a_file", "studio.py", lambda w: _with(_studio(w), "--run", str(_w(w, "run.txt"))), "--run", "run.txt"),
    C("run_not_given", "studio.py", lambda w: _studio(w)[2:], "--run"),
    C("port_zero", "studio.py", lambda w: _studio(w, "--port", "0"), "--port"),
    C("port_too_large", "studio.py", lambda w: _studio(w, "--port", "70000"), "--port", "70000"),
    C("port_not_a_number", "studio.py", lambda w: _studio(w, "--port", "http"), "--port"),
    C("threads_negative", "studio.py", lambda w: _studio(w, "--threads", "-2"), "--threads"),
    C("device_unknown", "studio.py", lambda w: _with(_studio(w), "--device", "gpu"), "--device", "gpu"),
    C("device_cuda_without_cuda", "studio.py", lambda w: _with(_studio(w), "--device", "cuda"), "--device",
      patch=_no_cuda),
    C("device_gpu_that_does_not_exist", "studio.py", lambda w: _with(_studio(w), "--device", "cuda:3"), "--device",
      "cuda:3", patch=_two_gpus),
    C("data_root_missing", "studio.py", lambda w: _studio(w, "--data_root", str(w.tmp / "nodata")), "--data_root",
      "nodata"),
    C("generated_missing", "studio.py", lambda w: _studio(w, "--generated", str(w.tmp / "gen")), "--generated"),
    C("mask_model_missing", "studio.py", lambda w: _studio(w, "--mask_model", str(w.tmp / "maskrun")),
      "--mask_model", "maskrun"),
    C("out_is_a_file", "studio.py", lambda w: _with(_studio(w), "--out", str(_w(w, "pairs.txt"))), "--out",
      "pairs.txt"),
    C("out_under_a_file", "studio.py", lambda w: _with(_studio(w), "--out", str(_w(w, "pairs.txt")) + "/pairs"),
      "--out", "pairs.txt"),
    C("unknown_flag", "studio.py", lambda w: _studio(w, "--share"), "--share"),
]

TABLE = {"main.py": MAIN, "generate_with_mask.py": GEN, "train_all.py": ALL, "compare_synthesizers.py": CMP,
         "export_pairs.py": EXP, "train_segmenter.py": SEG, "studio.py": STUDIO}
CASES = [c for cases in TABLE.values() for c in cases]


# ------------------------------------------------------------------------------------------ the checks
def _state(root: Path) -> dict:
    """Every file and folder under ``root`` with its size and modification time: what a case may not change."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (p.is_dir(), st.st_size if not p.is_dir() else 0, st.st_mtime_ns)
    return out


def test_every_command_has_at_least_10_cases_and_70_in_all():
    counts = {entry: len(cases) for entry, cases in TABLE.items()}
    assert all(n >= 10 for n in counts.values()), counts
    assert sum(counts.values()) >= 70
    for entry, cases in TABLE.items():
        names = [c.name for c in cases]
        assert len(names) == len(set(names)), entry
        assert all(c.entry == entry for c in cases)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.entry}-{c.name}" for c in CASES])
def test_bad_input_is_refused_in_one_line(case, world, capsys, monkeypatch):
    monkeypatch.setattr(importlib.import_module("ldm.train_all").subprocess, "call", _spawned)
    monkeypatch.setattr(importlib.import_module("ldm.studio.page"), "launch", _server_started)
    argv = [str(a) for a in case.argv(world)]
    if case.patch is not None:
        case.patch(world, monkeypatch)
    before = _state(world.tmp)
    capsys.readouterr()
    rc = ENTRY[case.entry](argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith(f"{case.entry}: error: "), lines[0]
    for part in case.expect:
        assert part.lower() in lines[0].lower(), f"{part!r} not named in: {lines[0]}"
    after = _state(world.tmp)
    assert after == before, (f"files changed: added {sorted(set(after) - set(before))[:5]}, removed "
                             f"{sorted(set(before) - set(after))[:5]}, modified "
                             f"{[k for k in before if k in after and before[k] != after[k]][:5]}")


# ------------------------------------------------------------------------------------------ real processes
@pytest.mark.parametrize("argv,culprit", [
    (["main.py", "--base", "{tmp}/tab.yaml", "-l", "{tmp}/logs"], "tab.yaml, line 2"),
    (["main.py", "--max_steps", "-5", "--base", "{tmp}/list.yaml", "-l", "{tmp}/logs"], "list.yaml"),
    (["scripts/studio.py", "--run", "{tmp}/norun", "--out", "{tmp}/pairs"], "--run not found"),
])
def test_real_processes_print_one_line_and_exit_2(argv, culprit, tmp_path):
    (tmp_path / "tab.yaml").write_text("model:\n\ttarget: x\n")
    (tmp_path / "list.yaml").write_text("- model\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    name = Path(argv[0]).name
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"{name}: error: ") and culprit in p.stderr, p.stderr
    assert not (tmp_path / "logs").exists() and not (tmp_path / "pairs").exists()
