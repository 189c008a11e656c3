#!/usr/bin/env python
"""Training speed of the embedded demo's tiny LDM and FAST, before/after the data-path changes.

    .venv/bin/python scripts/benchmark_training.py                    # ~2-4 min on 2 CPU cores
    .venv/bin/python scripts/benchmark_training.py --threads 1 --steps 20 --json bench.json

A benchmark, not a test: it prints numbers and asserts nothing. What it times, per variant, is one
optimizer step of the model's own ``shared_step`` (data loading from the configured DataModule,
first-stage encoding, conditioning, forward, backward, AdamW) in a plain loop -- no Lightning -- so
the model and data path are measured, not the trainer:

- ``ldm/before``  configs/tiny/ldm.yaml as it was: images decoded and resized by PIL at every step
  (``cache_images: false``) and re-encoded by the frozen autoencoder at every step;
- ``ldm/after``   images decoded once (``cache_images: true``), the autoencoder posterior cached per
  image (``cache_latents: true``; a fresh z ~ q(z|x) is still drawn at every step, see
  ``ldm/models/diffusion/latent_cache.py``) and the fused AdamW kernel;
- ``fast/before``, ``fast/after``  the same for configs/fast/texture-demo.yaml (FARM + adaptor +
  embeddings on the frozen backbone of the same architecture).

Variants run round-robin in blocks of ``--block`` steps and each variant's median step time is
reported, so a shared machine's drifting speed affects all of them alike. The ratio FAST-step /
LDM-step is taken between the *after* variants (the same backbone, the same data path). Weights are
random (the cost of a step does not depend on their values); the dataset is built into a temporary
folder unless ``--data`` names one. ``--lightning`` also runs ``main.py`` for ``--steps`` steps per
after-variant and reports its steps/s (trainer, callbacks and logging included).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from utils.cli import ArgumentParser
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"ldm": "configs/tiny/ldm.yaml", "fast": "configs/fast/texture-demo.yaml"}


def get_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first (default 3)")
    p.add_argument("--block", type=int, default=5, help="steps per round-robin block (default 5)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument("--data", default=None, help="texture-ad root (default: built in a temporary folder)")
    p.add_argument("--variants", default="ldm/before,ldm/after,fast/before,fast/after")
    p.add_argument("--lightning", action="store_true", help="also time main.py runs of the after-variants")
    p.add_argument("--json", default=None, help="write the rows here")
    return p


def build_variant(name: str, data_root: str):
    """(step function, model) of one variant; the step pulls the next batch itself."""
    import torch
    from omegaconf import OmegaConf

    from ldm.util import fused_optimizer_kwargs, instantiate_from_config

    kind, when = name.split("/")
    if kind not in CONFIGS or when not in ("before", "after"):
        raise UserError(f"--variants: unknown variant '{name}' (ldm|fast)/(before|after)")
    cfg = OmegaConf.load(ROOT / CONFIGS[kind])
    train = cfg.data.params.train.params
    train.root = data_root
    after = when == "after"
    train.cache_images = after if kind == "ldm" else True   # AnomalyDataset always decoded once
    cfg.model.params.cache_latents = after
    cfg.model.params.pop("ckpt_path", None)
    cfg.model.params.first_stage_config.params.ckpt_path = None
    if kind == "fast":
        train.category, train.defect = "brick", "scratch"
        pc = cfg.model.params.personalization_config.params
        pc.names = ["brick+scratch"]
        pc.initializer_words = ["scratch"]
    with contextlib.redirect_stdout(io.StringIO()):
        model = instantiate_from_config(cfg.model)
        data = instantiate_from_config(cfg.data)
        data.setup("fit")
    model.learning_rate = 1e-4
    model.train()
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    # before: the per-tensor AdamW loop; after: the fused kernel configure_optimizers now uses
    opt = torch.optim.AdamW(params, lr=1e-4, **(fused_optimizer_kwargs(params) if after else {"foreach": False}))
    loader = data.train_dataloader()
    state = {"it": iter(loader)}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(loader)
            return next(state["it"])

    def step() -> float:
        t = time.perf_counter()
        batch = next_batch()
        loss, _ = model.shared_step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    return step, model


def time_variants(names: list[str], data_root: str, steps: int, warmup: int, block: int) -> dict:
    built = {n: build_variant(n, data_root) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:
        for _ in range(warmup):
            built[n][0]()
    while any(len(v) < steps for v in times.values()):
        for n in names:
            for _ in range(min(block, steps - len(times[n]))):
                times[n].append(built[n][0]())
    rows = {}
    for n in names:
        med = statistics.median(times[n])
        cache = getattr(built[n][1], "latent_cache", None)
        rows[n] = {"variant": n, "median_step_s": med, "steps_per_s": 1.0 / med,
                   "latent_cache": cache.stats() if cache is not None else None}
    return rows


def time_lightning(kind: str, data_root: str, steps: int, workdir: Path) -> dict:
    """steps/s of a real main.py run (after-variant), from the run's timing.json."""
    import main as main_py

    argv = ["--base", CONFIGS[kind], "-t", "-l", str(workdir), "-lf", kind, "--max_steps", str(steps),
            "--no-test", f"data.params.train.params.root={data_root}"]
    if kind == "fast":
        argv += ["--mvtec_path", f"{data_root}/brick/ground_truth/scratch/", "--init_word", "scratch"]
    with contextlib.redirect_stdout(io.StringIO()):
        main_py.run(argv)
    doc = json.loads((workdir / kind / "timing.json").read_text())
    return {"variant": f"{kind}/after (main.py)", "steps_per_s": doc["steps_per_s_after_warmup"],
            "median_step_s": 1.0 / doc["steps_per_s_after_warmup"] if doc["steps_per_s_after_warmup"] else None}


def main(argv=None) -> int:
    opt = get_parser().parse_args(argv)
    import torch

    if opt.steps < 1 or opt.block < 1 or opt.warmup < 0:
        raise UserError("--steps and --block must be >= 1, --warmup >= 0")
    if opt.threads:
        torch.set_num_threads(opt.threads)
    names = [v.strip() for v in opt.variants.split(",") if v.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        data_root = opt.data
        if data_root is None:
            from ldm.data.texture_ad import build_texture_ad

            data_root = str(Path(tmp) / "texture-ad")
            with contextlib.redirect_stdout(io.StringIO()):
                build_texture_ad(data_root)
        elif not Path(data_root).is_dir():
            raise UserError(f"--data not found: {data_root}")
        print(f"timing {', '.join(names)}: {opt.steps} steps each, round-robin blocks of {opt.block}, "
              f"{torch.get_num_threads()} torch threads", flush=True)
        rows = time_variants(names, data_root, opt.steps, opt.warmup, opt.block)
        if opt.lightning:
            for kind in ("ldm", "fast"):
                rows[f"{kind}/lightning"] = time_lightning(kind, data_root, opt.steps + 5, Path(tmp) / "runs")
    print("\n| variant | median step (ms) | steps/s |\n|---|---|---|")
    for r in rows.values():
        print(f"| {r['variant']} | {1000 * r['median_step_s']:.1f} | {r['steps_per_s']:.2f} |")
    summary = {}
    for kind in ("ldm", "fast"):
        b, a = rows.get(f"{kind}/before"), rows.get(f"{kind}/after")
        if b and a:
            summary[f"{kind}_speedup"] = b["median_step_s"] / a["median_step_s"]
            print(f"{kind}: {summary[f'{kind}_speedup']:.2f}x faster after")
    if "ldm/after" in rows and "fast/after" in rows:
        summary["fast_over_ldm_step"] = rows["fast/after"]["median_step_s"] / rows["ldm/after"]["median_step_s"]
        print(f"FAST step / LDM step (same backbone, after): {summary['fast_over_ldm_step']:.2f} (goal <= 1.15)")
    if "ldm/before" in rows and "fast/before" in rows:
        summary["fast_over_ldm_step_before"] = rows["fast/before"]["median_step_s"] / rows["ldm/before"]["median_step_s"]
        print(f"FAST step / LDM step (before): {summary['fast_over_ldm_step_before']:.2f}")
    print("(timings from one run on this machine; on a shared machine compare the ratios, not the absolute values)")
    if opt.json:
        from utils.atomic import write_text_atomic

        write_text_atomic(Path(opt.json), json.dumps({"rows": list(rows.values()), "summary": summary,
                                                      "threads": torch.get_num_threads()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli("benchmark_training.py", main))
