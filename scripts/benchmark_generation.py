#!/usr/bin/env python
"""Generation speed at a config's scale: fp32 eager vs bf16 vs compiled, measured in one run.

    python scripts/benchmark_generation.py --config configs/fast/mvtec.yaml          # paper scale (GPU)
    python scripts/benchmark_generation.py --variants fp32:8,bf16:8 --pairs 16        # tiny config (CPU)

Per variant ``PRECISION[+compile]:BATCH`` (weights random: a forward's cost does not depend on them):

- ``denoiser ms/img``: one FAST denoiser call (UNet + adaptor) at that batch, median, per image;
- ``AIAS s/img`` and ``overhead``: one AIAS-``--steps`` sampling run (FARM re-injection and background
  write-back included) per image, and wall / (NFE x t_denoiser) -- the sampler's cost beyond its network
  calls, 1.00 = none;
- ``pairs/s``: end to end through the library's writer (``ldm.generation.write_pairs``): encode, sample,
  decode, paste, score and PNG writing (overlapped with the next batch), ``--pairs`` pairs after one
  untimed warm-up batch; ``compile s`` is what that warm-up cost.

Eager variants run before compiled ones (compiling replaces the modules' forward for the rest of the run).
The speed-up column divides the first variant's AIAS time per image by each row's.
"""
from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from ldm.benchmarks.samplers import (BENCH_NAME, _sync, build_model, make_inputs, run_sampler,
                                     single_call_denoiser, time_calls)
from utils.atomic import write_text_atomic
from utils.cli import ArgumentParser
from utils.errors import UserError

DEFAULT_VARIANTS = "fp32:8,bf16:64,bf16+compile:64"


def parse_variants(spec: str) -> list[dict]:
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        head, _, batch = item.partition(":")
        precision, _, comp = head.partition("+")
        if precision not in ("fp32", "bf16") or comp not in ("", "compile") or not batch.isdigit() or int(batch) < 1:
            raise UserError(f"--variants: bad entry '{item}' (expected fp32|bf16[+compile]:BATCH, e.g. bf16+compile:64)")
        out.append({"label": item, "precision": precision, "compile": comp == "compile", "batch": int(batch)})
    if not out:
        raise UserError("--variants: no variant given")
    # compiling replaces forward in place: every eager variant first
    return sorted(out, key=lambda v: v["compile"])


def build_parser():
    p = ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/fast/texture-demo.yaml", help="FAST model config")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help=f"default {DEFAULT_VARIANTS}")
    p.add_argument("--steps", type=int, default=10, help="AIAS network calls (default 10)")
    p.add_argument("--pairs", type=int, default=None, help="pairs written end to end per variant (default 4 batches)")
    p.add_argument("--calls", type=int, default=10, help="timed denoiser calls per variant")
    p.add_argument("--repeats", type=int, default=3, help="timed sampling runs per variant (median)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the rows here")
    return p


class MemoryInputs:
    """``n`` model-size items like ``GenerationInputs``'s: smooth random normal images, one rectangle mask each."""

    def __init__(self, n: int, size: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(n, 3, max(size // 16, 2), max(size // 16, 2), generator=g)
        self.images = (torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear") * 2 - 1)
        self.masks = torch.zeros(n, size, size)
        for i in range(n):
            h, w = (int(torch.randint(size // 8, size // 3, (1,), generator=g)) for _ in range(2))
            y, x = (int(torch.randint(0, size - s, (1,), generator=g)) for s in (h, w))
            self.masks[i, y:y + h, x:x + w] = 1.0

    def __getitem__(self, n: int) -> dict:
        return {"image": self.images[n].permute(1, 2, 0).numpy(), "mask": self.masks[n].numpy(),
                "normal_path": f"memory/{n}", "mask_origin": "rectangle", "placement": "off"}


def end_to_end(model, variant: dict, size: int, n_pairs: int, steps: int, device) -> dict:
    """pairs/s through ``write_pairs`` (one warm-up batch first: compilation and allocation)."""
    from ldm.generation import GenerationOptions, TrainedRun, make_sampler, write_pairs
    from ldm.pairs import PairWriter

    b = variant["batch"]
    run = TrainedRun(model, None, Path("-"), Path("-"), 0, Path("-"), BENCH_NAME, {})
    opt = GenerationOptions(pt_path="-", sample_name="bench", anomaly_name="defect", data_root="-", steps=steps,
                            batch_size=b, precision=variant["precision"], compile=variant["compile"],
                            prompt="Anomaly *", progress=False)
    sampler = make_sampler(run, opt)
    inputs = MemoryInputs(n_pairs + b, size)
    with tempfile.TemporaryDirectory() as tmp:
        writer = PairWriter(tmp, "bench", "defect")
        _sync(device)
        t0 = time.perf_counter()
        write_pairs(run, opt, inputs, list(range(b)), writer, b, sampler, device, size)
        _sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_pairs(run, opt, inputs, list(range(b, b + n_pairs)), writer, b, sampler, device, size)
        _sync(device)
        wall = time.perf_counter() - t0
        written = sum(1 for n in range(b + n_pairs) if writer.done(n))
    if written != n_pairs + b:
        raise RuntimeError(f"end to end: {written} of {n_pairs + b} pairs written")
    return {"pairs_per_s": n_pairs / wall, "ms_per_pair": wall / n_pairs * 1e3, "warmup_s": warm}


def main(argv=None) -> list[dict]:
    a = build_parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    variants = parse_variants(a.variants)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: CUDA is not available here")
    from ldm.generation import GenerationOptions, acceleration

    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f" | torch {torch.__version__} | CPU threads {torch.get_num_threads()} | config {a.config}", flush=True)
    t0 = time.perf_counter()
    model = build_model(a.config, None, device)
    size = int(model.image_size) * 2 ** (len(model.first_stage_model.decoder.up) - 1) \
        if hasattr(model.first_stage_model, "decoder") else int(model.image_size)
    print(f"model built in {time.perf_counter() - t0:.0f} s; latent {model.channels}x{model.image_size}^2, "
          f"images {size}^2, AIAS-{a.steps}", flush=True)
    rows = []
    for v in variants:
        accel = acceleration(GenerationOptions(pt_path="-", sample_name="b", anomaly_name="d", data_root="-",
                                               precision=v["precision"], compile=v["compile"]))
        inputs = make_inputs(model, v["batch"], device, 0)
        sampler = model.make_sampler("aias", a.steps)
        farm = model.farm_fn()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode(), accel.autocast(device):
            t0 = time.perf_counter()
            accel.prepare(model, device)
            den = single_call_denoiser(model, inputs)
            x = torch.randn(inputs["shape"], device=device)
            tvec = torch.full((v["batch"],), 500, dtype=torch.long, device=device)
            den(x, tvec)
            run_sampler(sampler, model, inputs, device, farm)  # warm-up: compilation, graph capture, allocation
            _sync(device)
            first = time.perf_counter() - t0
            t_den = statistics.median(time_calls(lambda: den(x, tvec), a.calls, device))
            walls = time_calls(lambda: run_sampler(sampler, model, inputs, device, farm), a.repeats, device, warmup=0)
        wall = statistics.median(walls)
        row = {"variant": v["label"], "batch": v["batch"], "denoiser_ms_per_image": t_den / v["batch"] * 1e3,
               "aias_s_per_image": wall / v["batch"], "overhead": wall / (sampler.nfe * t_den),
               "warmup_s": first}
        row.update({k: e for k, e in end_to_end(model, v, size, a.pairs or 4 * v["batch"], a.steps, device).items()
                    if k != "warmup_s"})
        if device.type == "cuda":
            row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        rows.append(row)
        print(json.dumps({k: round(x, 4) if isinstance(x, float) else x for k, x in row.items()}), flush=True)
    ref = rows[0]["aias_s_per_image"]
    print()
    print(f"{'variant':<20}{'den ms/img':>11}{'AIAS s/img':>12}{'speed-up':>10}{'overhead':>10}{'pairs/s':>9}"
          f"{'warm-up s':>11}")
    for r in rows:
        print(f"{r['variant']:<20}{r['denoiser_ms_per_image']:>11.3f}{r['aias_s_per_image']:>12.4f}"
              f"{ref / r['aias_s_per_image']:>9.1f}x{r['overhead']:>10.3f}{r['pairs_per_s']:>9.1f}{r['warmup_s']:>11.1f}")
        r["speedup_vs_first"] = ref / r["aias_s_per_image"]
    print("overhead = sampler wall / (NFE x denoiser call); pairs/s end to end (encode, sample, decode, paste, "
          "PNG writing); warm-up = first denoiser call + first sampling run (compilation, CUDA graph capture)")
    if a.json:
        write_text_atomic(a.json, json.dumps(rows, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    from utils.cli import run_cli

    sys.exit(run_cli("benchmark_generation.py", lambda: main() and 0))
