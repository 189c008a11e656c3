#!/usr/bin/env python
"""The embedded demo: the whole FAST pipeline on a CPU, with no downloads.

1. build the texture-ad dataset from scikit-image's CC0 textures;
2. train a tiny autoencoder (stage 1), then a tiny text-conditioned LDM on normal images (stage 2) —
   together they stand in for the pretrained LDM text2img-large the real datasets use;
3. train FAST (embeddings + FARM + adaptor on the frozen stage-2 backbone) per defect type;
4. generate image–mask pairs with AIAS (10 network calls per image);
5. train the same segmenter on FAST, DRAEM, CutPaste and normal-only pairs and compare them on the
   held-out real side of the split; write a table, a bar chart and contact sheets.

Every stage is skipped when its output exists and resumed when it was interrupted, so running the
demo again continues where it stopped. ``--quick`` shrinks every stage (a smoke run of a few minutes).
"""
from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.cli import ArgumentParser  # noqa: E402

def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="outputs/demo", help="everything the demo writes goes here")
    p.add_argument("--category", default="brick", help="texture-ad category (brick, grass, gravel)")
    p.add_argument("--defects", default="scratch,stain,crack,hole",
                   help="defect types to synthesise (the comparison needs all of the category's types)")
    p.add_argument("--n_samples", type=int, default=500, help="pairs per defect type")
    p.add_argument("--ae_steps", type=int, default=600)
    p.add_argument("--ldm_steps", type=int, default=2000)
    p.add_argument("--fast_steps", type=int, default=400)
    p.add_argument("--aias_steps", type=int, default=10, help="AIAS network calls (segments + 2 DDPM steps)")
    p.add_argument("--seg_steps", type=int, default=600, help="segmenter training steps per synthesizer")
    p.add_argument("--quick", action="store_true", help="tiny budgets everywhere (smoke run)")
    p.add_argument("--gpus", default=None, help="as main.py --gpus (default: CPU)")
    return p


def quick(opt) -> None:
    opt.n_samples, opt.ae_steps, opt.ldm_steps, opt.fast_steps, opt.seg_steps = 40, 60, 150, 60, 60


def sh(cmd: list[str], what: str) -> None:
    print(f"\n=== {what}\n$ {' '.join(cmd)}", flush=True)
    t = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        raise SystemExit(f"run_demo.py: {what} failed (exit code {rc}); run the demo again to resume")
    print(f"=== {what}: done in {time.time() - t:.0f} s", flush=True)


def last_step(ckpt: Path) -> int:
    from utils.safe_load import safe_load

    return int(safe_load(ckpt).get("global_step", 0))


def train_stage(opt, name: str, config: str, steps: int, overrides: list[str]) -> Path:
    """Run (or resume, or skip) one main.py stage; returns its last.ckpt."""
    logdir = Path(opt.out) / "logs" / name
    ckpt = logdir / "checkpoints" / "last.ckpt"
    gpus = ["--gpus", opt.gpus] if opt.gpus else []
    if ckpt.is_file() and last_step(ckpt) >= steps:
        print(f"=== {name}: already trained ({ckpt})")
        return ckpt
    if ckpt.is_file():
        cmd = [sys.executable, "main.py", "-r", str(logdir), "-t", "--max_steps", str(steps), *gpus]
    else:
        cmd = [sys.executable, "main.py", "--base", config, "-t", "-l", str(Path(opt.out) / "logs"), "-lf", name,
               "--max_steps", str(steps), *gpus, *overrides]
    sh(cmd, f"train {name}")
    return ckpt


def main(argv=None) -> int:
    opt = get_parser().parse_args(argv)
    if opt.quick:
        quick(opt)
    out = Path(opt.out)
    if not out.is_absolute():
        out = ROOT / out
        opt.out = str(out)
    data = out / "data" / "texture-ad"
    t0 = time.time()

    sh([sys.executable, "scripts/build_texture_dataset.py", "--out", str(data)], "build texture-ad")
    root_override = [f"data.params.train.params.root={data}"]
    ae = train_stage(opt, "autoencoder", "configs/tiny/autoencoder.yaml", opt.ae_steps, root_override)
    ldm = train_stage(opt, "ldm", "configs/tiny/ldm.yaml", opt.ldm_steps,
                      root_override + [f"model.params.first_stage_config.params.ckpt_path={ae}"])

    defects = [d for d in opt.defects.split(",") if d]
    fast_logs = out / "logs" / "fast"
    gen_dir = out / "generated" / "fast"
    for defect in defects:
        run = fast_logs / f"{opt.category}+{defect}"
        ckpt = run / "checkpoints" / "last.ckpt"
        if not (ckpt.is_file() and last_step(ckpt) >= opt.fast_steps):
            sh([sys.executable, "scripts/train_all.py", "--config", "configs/fast/texture-demo.yaml",
                "--dataset", str(data), "--ckpt", str(ldm), "--categories", opt.category, "--defects", defect,
                "--logdir", str(fast_logs), *(["--gpus", opt.gpus] if opt.gpus else []),
                f"lightning.trainer.max_steps={opt.fast_steps}"], f"train FAST {opt.category}+{defect}")
        sh([sys.executable, "generate_with_mask.py", "--data_root", str(data), "--sample_name", opt.category,
            "--anomaly_name", defect, "--pt_path", str(run / "checkpoints"),
            "--mask_path", str(data / opt.category / "ground_truth" / defect), "--outdir", str(gen_dir),
            "--sampler", "aias", "--steps", str(opt.aias_steps), "--n_samples", str(opt.n_samples),
            "--batch_size", "50"], f"generate {opt.category}+{defect}")

    compare = out / "comparison"
    sh([sys.executable, "scripts/compare_synthesizers.py", "--dataset_root", str(data), "--layout", "mvtec",
        "--categories", opt.category, "--synthesizers", "fast,draem,cutpaste,normal", "--fast_dir", str(gen_dir),
        "--mask_source", "real", "--size", "64", "--n_samples", str(opt.n_samples),
        "--steps", str(opt.seg_steps), "--out", str(compare)],
       "compare synthesizers")

    print(f"\nDemo finished in {(time.time() - t0) / 60:.1f} min. Look at:")
    for pattern in ("logs/ldm/images/train/samples_*.png", "logs/fast/*/images/train/samples_*.png",
                    "generated/fast/*/*/contact_sheet.png", "comparison/*.png", "comparison/results.md"):
        hits = sorted(glob.glob(str(out / pattern)))
        if hits:
            print(f"  {hits[-1]}")
    table = compare / "results.md"
    if table.is_file():
        print("\n" + table.read_text())
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli("run_demo.py", main))
