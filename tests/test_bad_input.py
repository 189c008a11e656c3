"""Bad input, one table: every entry point refuses it with one line naming the file, key or flag,
exit code 2, no traceback and no partial output. Unusual but valid input just works.

Entry points are called in-process through ``utils.cli.run_cli`` (what their ``__main__`` does); three
cases also run as real processes to show the same behaviour from a shell.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import generate_with_mask as gen_mod
import main as main_mod
from tests.fixtures_data import make_mvtec
from tests.run_fixture import gen_args, make_dataset, make_run
from tests.tiny_configs import ldm_config
from utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]


def _entry(module: str):
    """The library command a script runs: ``cli(argv)`` (one-line user errors, exit code 2)."""
    import importlib

    return importlib.import_module(module).cli


ENTRY: dict[str, Callable[[list], int]] = {
    "main.py": lambda argv: run_cli("main.py", lambda: main_mod.main(argv)),
    "generate_with_mask.py": lambda argv: run_cli("generate_with_mask.py", lambda: gen_mod.main(argv) and 0),
    "build_texture_dataset.py": lambda argv: _entry("ldm.data.texture_ad")(argv),
    "compare_synthesizers.py": lambda argv: _entry("ldm.segmentation.compare")(argv),
    "train_segmenter.py": lambda argv: _entry("ldm.segmentation.train_on_pairs")(argv),
    "synthesize_baseline.py": lambda argv: _entry("ldm.synthesizers.common")(argv),
    "export_pairs.py": lambda argv: _entry("ldm.export")(argv),
}


@dataclass
class World:
    tmp: Path
    data: Path            # texture-ad with a trained run
    ckdir: Path           # the run's checkpoints/
    mvtec: Path           # an MVTec-like tree to break


@dataclass
class Case:
    name: str
    entry: str
    argv: Callable[[World], list]          # may also break files in the world before returning argv
    expect: str                            # a substring of the one-line message (file, key or flag)
    no_output: Callable[[World], list] = field(default=lambda w: [w.tmp / "out"])
    patch: Callable | None = None          # (world, monkeypatch) -> None: simulate a failing system


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    work = tmp_path_factory.mktemp("bad")
    data = make_dataset(work / "texture-ad")
    ckdir = make_run(work, data)
    return work, data, ckdir


@pytest.fixture
def world(base, tmp_path):
    work, data, ckdir = base
    return World(tmp_path, data, ckdir, make_mvtec(tmp_path / "mvtec"))


# ------------------------------------------------------------------------------------ case helpers
def _main_cfg(w: World, **train) -> Path:
    """A main.py config training a tiny LDM on AnomalyDataset(train) -- data errors fail in setup."""
    params = {"root": str(w.mvtec), "category": "bottle", "defect": "broken_large", "size": 16}
    params.update(train)
    cfg = {"model": ldm_config(), "data": {"target": "ldm.data.datamodule.DataModuleFromConfig",
                                           "params": {"batch_size": 2, "num_workers": 0,
                                                      "train": {"target": "ldm.data.anomaly.AnomalyDataset",
                                                                "params": params}}},
           "lightning": {"trainer": {"max_steps": 1}}}
    path = w.tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _main(w: World, *extra, **train) -> list:
    return ["--base", str(_main_cfg(w, **train)), "-t", "-l", str(w.tmp / "out"), "-lf", "run", "--gpus", "none",
            *extra]


def _break(fn):
    """argv builder that first damages the MVTec tree, then trains on it with main.py."""
    def build(w: World) -> list:
        fn(w.mvtec / "bottle")
        return _main(w)
    return build


def _gen(w: World, *extra) -> list:
    return gen_args(w.data, w.ckdir, w.tmp / "out", "--n_samples", "2", *extra)


def _with(args: list, flag: str, value: str) -> list:
    args = list(args)
    args[args.index(flag) + 1] = value
    return args


def _file(w: World, name: str, content: bytes = b"x") -> Path:
    p = w.tmp / name
    p.write_bytes(content)
    return p


def _truncated_ckpt(w: World) -> Path:
    p = w.tmp / "trunc.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(100, 100)}}, p)
    p.write_bytes(p.read_bytes()[:300])
    return p


def _evil_ckpt(w: World) -> Path:
    import pickle

    class Evil:
        def __reduce__(self):
            return (shutil.rmtree, (str(w.tmp / "victim"),))

    (w.tmp / "victim").mkdir(exist_ok=True)
    p = w.tmp / "evil.ckpt"
    p.write_bytes(pickle.dumps({"state_dict": Evil()}))
    return p


def _other_arch_ckpt(w: World) -> Path:
    p = w.tmp / "other.ckpt"
    torch.save({"state_dict": {"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}}, p)
    return p


def _disk_full(w: World, mp):
    """The third file written to disk fails with ENOSPC, as on a full disk (PNG saves and raw writes)."""
    from pathlib import Path as _Path

    real_save, real_write = Image.Image.save, _Path.write_bytes
    calls = {"n": 0}

    def full(path):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def save(self, fp, *args, **kwargs):
        if isinstance(fp, (str, _Path)):
            full(fp)
        return real_save(self, fp, *args, **kwargs)

    def write_bytes(self, data):
        full(self)
        return real_write(self, data)

    mp.setattr(Image.Image, "save", save)
    mp.setattr(_Path, "write_bytes", write_bytes)


def _read_only(w: World, mp):
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(w.tmp / "out"))

    mp.setattr(tempfile, "mkdtemp", refuse)


def _mask(w: World, rel: str, array) -> None:
    Image.fromarray(np.asarray(array)).save(w.mvtec / "bottle" / rel)


CASES = [
    # --- build_texture_dataset.py
    Case("texture_out_is_a_file", "build_texture_dataset.py",
         lambda w: ["--out", str(_file(w, "out"))], "exists and is not a folder", no_output=lambda w: []),
    Case("texture_negative_count", "build_texture_dataset.py",
         lambda w: ["--out", str(w.tmp / "out"), "--per-defect", "-1"], "--per-defect"),
    Case("texture_unknown_texture", "build_texture_dataset.py",
         lambda w: ["--out", str(w.tmp / "out"), "--textures", "marble"], "--textures"),
    Case("texture_read_only_out", "build_texture_dataset.py",
         lambda w: ["--out", str(w.tmp / "out")], "permission denied", patch=_read_only),
    Case("texture_disk_full", "build_texture_dataset.py",
         lambda w: ["--out", str(w.tmp / "out"), "--textures", "brick", "--train-good", "2", "--test-good", "1",
                    "--per-defect", "1", "--size", "32"], "no space left on device", patch=_disk_full),
    # --- main.py: config, flags, checkpoints
    Case("main_missing_config", "main.py", lambda w: ["--base", str(w.tmp / "nope.yaml")], "nope.yaml"),
    Case("main_typo_key", "main.py", lambda w: _main(w, "model.params.unet_confg=1"),
         "'unet_confg' is not a parameter"),
    Case("main_wrong_type", "main.py", lambda w: _main(w, "model.params.timesteps=abc"), "'timesteps'"),
    Case("main_missing_resume_dir", "main.py", lambda w: ["-r", str(w.tmp / "gone")], "gone"),
    Case("main_unrecognized_flag", "main.py", lambda w: _main(w, "--bogus"), "--bogus"),
    Case("main_conflicting_flags", "main.py", lambda w: ["-r", str(w.tmp), "-n", "x"], "-n/--name"),
    Case("main_bad_gpus", "main.py", lambda w: _main(w, "--gpus", "abc")[:-3] + ["--gpus", "abc"], "--gpus"),
    Case("main_missing_checkpoint", "main.py", lambda w: _main(w, "--actual_resume", str(w.tmp / "x.ckpt")),
         "x.ckpt"),
    Case("main_truncated_checkpoint", "main.py", lambda w: _main(w, "--actual_resume", str(_truncated_ckpt(w))),
         "trunc.ckpt"),
    Case("main_pickle_runs_code", "main.py", lambda w: _main(w, "--actual_resume", str(_evil_ckpt(w))),
         "refusing to call"),
    Case("main_checkpoint_of_other_architecture", "main.py",
         lambda w: _main(w, "--actual_resume", str(_other_arch_ckpt(w))), "other.ckpt"),
    # --- main.py: dataset loaders
    Case("data_missing_dir", "main.py", lambda w: _main(w, root=str(w.tmp / "absent")), "absent"),
    Case("data_empty_dir", "main.py",
         lambda w: (w.tmp / "empty").mkdir() or _main(w, root=str(w.tmp / "empty"), category=None, defect=None),
         "no categories found"),
    Case("data_unknown_category", "main.py", lambda w: _main(w, category="bottel"), "unknown category 'bottel'"),
    Case("data_unknown_defect", "main.py", lambda w: _main(w, defect="broken"), "unknown defect 'broken'"),
    Case("data_unknown_layout", "main.py", lambda w: _main(w, layout="mvtek"), "unknown dataset layout 'mvtek'"),
    Case("data_image_without_mask", "main.py",
         _break(lambda b: (b / "ground_truth" / "broken_large" / "000_mask.png").unlink()), "000.png"),
    Case("data_mask_without_image", "main.py",
         _break(lambda b: (b / "test" / "broken_large" / "001.png").unlink()), "001_mask.png"),
    Case("data_mask_of_another_size", "main.py",
         _break(lambda b: Image.fromarray(np.full((10, 10), 255, np.uint8)).save(
             b / "ground_truth" / "broken_large" / "000_mask.png")), "000_mask.png"),
    Case("data_truncated_png", "main.py",
         _break(lambda b: (b / "test" / "broken_large" / "000.png").write_bytes(
             (b / "test" / "broken_large" / "000.png").read_bytes()[:80])), "000.png"),
    Case("data_non_image_among_images", "main.py",
         _break(lambda b: (b / "test" / "broken_large" / "notes.png").write_text("not an image")), "notes.png"),
    Case("data_all_zero_masks", "main.py",
         _break(lambda b: [Image.fromarray(np.zeros((24, 32), np.uint8)).save(p)
                           for p in (b / "ground_truth" / "broken_large").glob("*.png")]), "no usable"),
    # --- generate_with_mask.py
    Case("gen_missing_pt_path", "generate_with_mask.py", lambda w: _with(_gen(w), "--pt_path", str(w.tmp / "ck")),
         "--pt_path"),
    Case("gen_wrong_weight_idx", "generate_with_mask.py", lambda w: _gen(w, "--weight_idx", "99"),
         "--weight_idx 99"),
    Case("gen_unknown_embedding_name", "generate_with_mask.py",
         lambda w: _with(_gen(w), "--anomaly_name", "scrach"), "brick+scratch"),
    Case("gen_zero_samples", "generate_with_mask.py", lambda w: _gen(w, "--n_samples", "0"), "--n_samples"),
    Case("gen_negative_batch", "generate_with_mask.py", lambda w: _gen(w, "--batch_size", "-1"), "--batch_size"),
    Case("gen_outdir_is_a_file", "generate_with_mask.py", lambda w: _with(_gen(w), "--outdir", str(_file(w, "o"))),
         "--outdir", no_output=lambda w: []),
    Case("gen_mask_source_needs_mask_path", "generate_with_mask.py",
         lambda w: [a for a in _gen(w) if a not in ("--mask_path", str(w.data / "brick/ground_truth/scratch"))],
         "--mask_path"),
    Case("gen_t_start_out_of_range", "generate_with_mask.py", lambda w: _gen(w, "--t_start", "5000"), "t_start"),
    Case("gen_unknown_sampler", "generate_with_mask.py", lambda w: _gen(w, "--sampler", "euler"), "--sampler"),
    Case("gen_missing_backbone", "generate_with_mask.py", lambda w: _gen(w, "--ckpt", str(w.tmp / "b.ckpt")),
         "b.ckpt"),
    Case("gen_read_only_outdir", "generate_with_mask.py", lambda w: _gen(w), "permission denied",
         patch=lambda w, mp: mp.setattr(
             "utils.atomic.tempfile.mkstemp",
             lambda *a, **k: (_ for _ in ()).throw(PermissionError(errno.EACCES, "Permission denied",
                                                                     str(w.tmp / "out"))))),
    # --- evaluation and baselines
    Case("compare_unknown_synthesizer", "compare_synthesizers.py",
         lambda w: ["--dataset_root", str(w.mvtec), "--layout", "mvtec", "--synthesizers", "fast,gan", "--out",
                    str(w.tmp / "out")], "gan"),
    Case("segmenter_missing_pairs", "train_segmenter.py",
         lambda w: ["--pairs", str(w.tmp / "nopairs"), "--dataset_root", str(w.mvtec), "--category", "bottle",
                    "--out", str(w.tmp / "out")], "nopairs"),
    Case("baseline_unknown_method", "synthesize_baseline.py",
         lambda w: ["--method", "gan", "--data_root", str(w.mvtec), "--category", "bottle", "--out",
                    str(w.tmp / "out")], "--method"),
    Case("baseline_zero_samples", "synthesize_baseline.py",
         lambda w: ["--method", "cutpaste", "--data_root", str(w.mvtec), "--category", "bottle", "--n_samples", "0",
                    "--out", str(w.tmp / "out")], "--n_samples"),
    Case("export_missing_pairs", "export_pairs.py",
         lambda w: ["--pairs", str(w.tmp / "nothing"), "--format", "mvtec", "--out", str(w.tmp / "out")], "nothing"),
]


def _files(paths) -> list:
    out = []
    for p in paths:
        if p.is_file():
            out.append(p)
        elif p.is_dir():
            out += [f for f in p.rglob("*") if f.is_file()]
    return out


def test_the_table_has_at_least_30_distinct_cases():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)) and len(names) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_in_one_line(case, world, capsys, monkeypatch):
    argv = case.argv(world)
    if case.patch is not None:
        case.patch(world, monkeypatch)
    capsys.readouterr()
    rc = ENTRY[case.entry](argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    assert errors[0].startswith(f"{case.entry}: error: ")
    assert case.expect.lower() in errors[0].lower(), errors[0]
    leftover = _files(case.no_output(world))
    assert not leftover, f"partial output left behind: {leftover[:3]}"
    report = os.environ.get("FAST_BAD_INPUT_REPORT")  # the table with what each case prints, for docs
    if report:
        with open(report, "a") as f:
            f.write(f"| {case.name} | `{errors[0].replace(str(world.tmp), '<tmp>')}` |\n")


def test_disk_full_during_generation_leaves_only_complete_pairs(world, capsys, monkeypatch):
    """ENOSPC on the third file: one line, exit 2, and every pair on disk is complete (no temp files)."""
    _disk_full(world, monkeypatch)
    rc = ENTRY["generate_with_mask.py"](_gen(world, "--n_samples", "3", "--batch_size", "1"))
    err = capsys.readouterr().err
    assert rc == 2 and "no space left on device" in err and "Traceback" not in err
    root = world.tmp / "out" / "brick" / "scratch"
    assert not [p for p in root.rglob(".*") if p.is_file()]          # no temporary files left
    strips = {p.name for p in (root / "image-mask-ori").glob("*.png")} if (root / "image-mask-ori").is_dir() else set()
    for name in strips:                                                # a strip marks a complete pair
        assert (root / "image" / name).is_file() and (root / "mask" / name).is_file()


# --------------------------------------------------------------------------------- valid but unusual
@pytest.mark.parametrize("kind", ["palette", "16bit", "class_ids", "bmp_jpg"])
def test_unusual_but_valid_input_just_works(tmp_path, kind):
    from ldm.data.anomaly import AnomalyDataset

    root = make_mvtec(tmp_path / "mvtec")
    b = root / "bottle"
    masks = sorted((b / "ground_truth" / "broken_large").glob("*.png"))
    for p in masks:
        a = np.asarray(Image.open(p)) > 0
        if kind == "palette":
            im = Image.fromarray(a.astype(np.uint8)).convert("P")
            im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
            im.save(p)
        elif kind == "16bit":
            Image.fromarray(a.astype(np.uint16) * 65535).save(p)
        elif kind == "class_ids":
            Image.fromarray(a.astype(np.uint8) * 3).save(p)       # VisA-style class id 3
        else:
            img = b / "test" / "broken_large" / p.name.replace("_mask", "")
            Image.open(img).convert("RGB").save(img.with_suffix(".jpg"), quality=95)
            img.unlink()
            Image.fromarray(a.astype(np.uint8) * 255).save(p.with_suffix(".bmp"))
            p.unlink()
    ds = AnomalyDataset(root, "bottle", "broken_large", size=16, anomaly_split="all")
    assert len(ds) == len(masks)
    for i in range(len(ds)):
        m = ds[i]["mask"]
        assert set(np.unique(m)) == {0.0, 1.0} and ds[i]["image"].shape == (16, 16, 3)


# ------------------------------------------------------------------------------- as real processes
@pytest.mark.parametrize("argv,expect", [
    (["main.py", "--base", "missing.yaml"], "main.py: error: config file not found: missing.yaml"),
    (["generate_with_mask.py", "--data_root", ".", "--sample_name", "a", "--anomaly_name", "b",
      "--pt_path", "nowhere"], "generate_with_mask.py: error: --pt_path not found: nowhere"),
    (["scripts/build_texture_dataset.py", "--out", "README.md"], "build_texture_dataset.py: error: --out README.md"),
])
def test_real_processes_print_one_line_and_exit_2(argv, expect):
    p = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith(expect) and "Traceback" not in p.stderr, p.stderr
