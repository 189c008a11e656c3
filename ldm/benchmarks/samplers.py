"""Time every sampler on one FAST model: NFE, seconds per image, speed-up over DDPM-1000, overhead.

    .venv/bin/python scripts/benchmark_samplers.py                       # tiny config, default samplers
    .venv/bin/python scripts/benchmark_samplers.py --threads 1 --json bench.json

What is timed: ``sampler.sample(...)`` of the FAST denoiser (conditioning + adaptor) with the official
mask guidance (``FAST.make_guidance``, the same object ``FAST.generate`` uses: FARM on the network input, background written back for
250 < t_e < 750) on random latents, masks and background latents, per-sample ``BatchRNG`` streams, as
``FAST.generate`` runs it minus the first-stage encode/decode.  Weights are random unless ``--ckpt`` is
given: the cost of a forward pass does not depend on the weight values.

overhead = wall / (NFE x t_denoiser), where t_denoiser is the median of single denoiser calls at the
same batch size, timed in the same run right before and after that sampler's runs (a shared machine's
speed drifts over minutes).  Everything the
sampler does besides the network calls counts as overhead, including the FARM calls of the guidance
(one per guided step); the ``ovh-FARM`` column removes those using FARM's own measured time.

DDPM-1000 is always timed as the reference for the speed-ups (added to ``--samplers`` if missing).
``--ddpm_estimate`` decides how:
  auto (default)  run all 1000 steps if the predicted time (repeats x 1000 x (t_denoiser + t_FARM)) is
                  at most 60 s, otherwise estimate from 50 steps;
  off             always run all 1000 steps;
  N (integer)     estimate: run N of the 1000 steps, evenly spread over the chain so the share of
                  steps with write-back stays the same, and scale the wall time by 1000 / N.
With ``--repeats N`` the runs go round-robin over the samplers and the median is reported, so a
machine whose speed drifts (a shared CPU) affects every sampler alike.
An estimated row is marked ``~`` in the table; its NFE is still 1000.  (A config with T != 1000
timesteps uses DDPM-T as the reference; the JSON key keeps its name.)
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import io
import json
import os
import pstats
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from ldm.models.diffusion.sampler_registry import SAMPLERS
from ldm.models.diffusion.samplers import BatchRNG
from utils.atomic import write_text_atomic
from utils.cli import ArgumentParser, run_cli
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

JSON_KEYS = ("sampler", "nfe", "seconds_per_image", "overhead", "speedup_vs_ddpm1000")
DEFAULT_SAMPLERS = "ddpm:1000,ddim:50,plms:50,aias:50,aias:10"
DEFAULT_CONFIG = "configs/fast/texture-demo.yaml"
BENCH_NAME = "bench+defect"
DDPM_REAL_BUDGET_S = 60.0
DDPM_AUTO_ESTIMATE_STEPS = 50


# ------------------------------------------------------------------------------------------ arguments
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_sampler_list(spec: str) -> list[tuple[str, str, int]]:
    """``"ddim:50,aias:10"`` -> [(label, name, steps)]; labels are the JSON ``sampler`` values."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        name, sep, steps = item.partition(":")
        name = name.strip().lower()
        if name not in SAMPLERS or not sep or not steps.strip().isdigit() or int(steps) < 1:
            raise ValueError(f"--samplers: bad entry '{item}' (expected name:steps with name in "
                             f"{', '.join(SAMPLERS)}, e.g. aias:10)")
        label = f"{name}:{int(steps)}"
        if label in [o[0] for o in out]:
            raise ValueError(f"--samplers: '{label}' is listed twice")
        out.append((label, name, int(steps)))
    if not out:
        raise ValueError("--samplers: no sampler given")
    return out


def parse_ddpm_estimate(value: str) -> str | int:
    """'auto', 'off' or a positive step count."""
    v = str(value).strip().lower()
    if v in ("auto", "off"):
        return v
    if v.isdigit() and int(v) >= 2:
        return int(v)
    raise argparse.ArgumentTypeError(f"--ddpm_estimate: expected auto, off or a step count >= 2, got '{value}'")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=DEFAULT_CONFIG, help=f"FAST model config (default {DEFAULT_CONFIG})")
    p.add_argument("--ckpt", default=None,
                   help="Lightning checkpoint to load (optional: timing does not depend on the weights)")
    p.add_argument("--batch_size", type=int, default=8, help="images per sampling run (default 8)")
    p.add_argument("--samplers", default=DEFAULT_SAMPLERS,
                   help=f"name:steps list (default {DEFAULT_SAMPLERS}); aias:N = N network calls in all "
                        "(N-2 segments + 2 refinement steps)")
    p.add_argument("--repeats", type=int, default=1, help="timed runs per sampler, median reported (default 1)")
    p.add_argument("--denoiser_calls", type=int, default=7,
                   help="timed single denoiser calls, before and after the samplers each (default 7)")
    p.add_argument("--device", default=default_device(), help="cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice); 1 gives steadier numbers on a shared CPU")
    p.add_argument("--json", default=None, metavar="PATH", help="write the rows as a JSON list")
    p.add_argument("--bf16", action="store_true", help="run denoiser and samplers under bf16 autocast (CUDA only)")
    p.add_argument("--ddpm_estimate", type=parse_ddpm_estimate, default="auto",
                   help="auto (default) | off | N: how DDPM-1000 is timed, see the module docstring")
    p.add_argument("--profile", default=None, metavar="LABEL",
                   help="after the table, split one run of this sampler (e.g. aias:50) into network / FARM / "
                        "loop time and cProfile the loop alone")
    p.add_argument("--seed", type=int, default=0, help="seed of the random latents, masks and noise")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    a = p.parse_args(argv)
    try:
        a.sampler_list = parse_sampler_list(a.samplers)
    except ValueError as e:
        p.error(str(e))
    if a.batch_size < 1:
        p.error(f"--batch_size must be >= 1, got {a.batch_size}")
    if a.repeats < 1 or a.denoiser_calls < 1:
        p.error("--repeats and --denoiser_calls must be >= 1")
    try:
        a.device = torch.device(a.device)
    except RuntimeError as e:
        p.error(f"--device: {e}")
    if a.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available in this torch build / machine")
    if a.bf16 and a.device.type != "cuda":
        p.error("--bf16: bf16 autocast is only benchmarked on CUDA (on CPU it would time a different, "
                "slower code path); drop the flag")
    listed = [s[0] for s in a.sampler_list]
    if a.profile is not None and a.profile not in listed and not a.profile.startswith("ddpm:"):
        p.error(f"--profile: '{a.profile}' is not one of the benchmarked samplers")
    try:
        a.config = str(resolve_config(a.config))
    except FileNotFoundError as e:
        p.error(str(e))
    if a.ckpt is not None and not Path(a.ckpt).is_file():
        p.error(f"--ckpt: {a.ckpt} not found")
    return a


# ------------------------------------------------------------------------------------------ model
def resolve_config(path: str | Path) -> Path:
    """The config path as given, else relative to the repository (so the default works from anywhere)."""
    p = Path(path)
    if not p.is_file() and not p.is_absolute() and (ROOT / p).is_file():
        p = ROOT / p
    if not p.is_file():
        raise FileNotFoundError(f"--config: {path} not found")
    return p


def load_model_config(path: str | Path) -> dict:
    """The ``model`` section of a YAML config as a plain dict, one per-name embedding, no ckpt_path."""
    from omegaconf import OmegaConf

    p = resolve_config(path)
    cfg = OmegaConf.to_container(OmegaConf.load(p), resolve=True)
    if "model" not in cfg:
        raise ValueError(f"--config: {p} has no 'model' section")
    return cfg["model"]


def build_model(config: str | Path, ckpt: str | None, device: torch.device):
    """The library's model builder (``ldm.generation.build_model``: random weights, no nested
    checkpoint loads), then ``--ckpt`` on top when given."""
    from ldm.generation import build_model as build

    from ldm.models.diffusion.fast import FAST
    from ldm.models.diffusion.stage import STAGE

    model = build(load_model_config(config), None, names=[BENCH_NAME], device=device)
    if not isinstance(model, (FAST, STAGE)):  # the models whose sampling_plan takes the text conditioning
        raise ValueError(f"--config: {config} does not build a FAST model (got {type(model).__name__})")
    if ckpt is not None:
        model.init_from_ckpt(ckpt)
    return model.eval().to(device)


def make_inputs(model, batch_size: int, device: torch.device, seed: int) -> dict:
    """Random conditioning, latent masks (one rectangle each) and background latents."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = model.channels, model.image_size, model.image_size
    mask = torch.zeros(batch_size, 1, h, w)
    for i in range(batch_size):
        mh, mw = (int(torch.randint(max(1, s // 4), max(2, s // 2) + 1, (1,), generator=g)) for s in (h, w))
        y, x = (int(torch.randint(0, s - m + 1, (1,), generator=g)) for s, m in ((h, mh), (w, mw)))
        mask[i, :, y:y + mh, x:x + mw] = 1.0
    z_bg = torch.randn(batch_size, c, h, w, generator=g)
    cond = {"caption": ["Anomaly *"] * batch_size, "name": [BENCH_NAME] * batch_size}
    if getattr(model, "embedding_manager", None) is None or not model.embedding_manager.per_name:
        cond = cond["caption"]
    with torch.inference_mode():
        ctx = model.get_learned_conditioning(cond)
    return {"cond": ctx, "mask": mask.to(device), "z_bg": z_bg.to(device), "shape": (batch_size, c, h, w),
            "seeds": [seed * 100003 + i for i in range(batch_size)]}


# ------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, n: int, device: torch.device, warmup: int = 2) -> list[float]:
    """Wall seconds of ``n`` calls after ``warmup`` untimed ones (the first calls pay for allocation)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


class CountingFarm:
    """Wraps the FARM callable to count its calls; costs one Python call per FARM call."""

    def __init__(self, farm):
        self.farm = farm
        self.calls = 0

    def __call__(self, x, mask, t):
        self.calls += 1
        return self.farm(x, mask, t)


def ddpm_subset(sampler, n: int):
    """A copy of a DDPM sampler keeping ``n`` of its steps, evenly spread (first and last included).

    The step pattern (write-back window, noise-free last step) is sampled in proportion, so the
    subset's wall time x len(steps)/n estimates the full chain. Its output is meaningless; only timing.
    """
    steps = sampler.steps
    n = min(int(n), len(steps))
    idx = sorted({round(i * (len(steps) - 1) / max(n - 1, 1)) for i in range(n)})
    sub = copy.copy(sampler)
    sub.steps = [steps[i] for i in idx]
    return sub


def run_sampler(sampler, model, inputs: dict, device: torch.device, farm, denoiser=None):
    """One full ``sample(...)`` with the model's own sampling plan (what ``generate`` runs) and fresh
    per-sample streams."""
    plan_denoiser, guidance = model.sampling_plan(inputs["cond"], inputs["mask"], inputs["z_bg"], farm=farm)
    denoiser = plan_denoiser if denoiser is None else denoiser
    return sampler.sample(denoiser, inputs["shape"], rng=BatchRNG(inputs["seeds"]), guidance=guidance,
                          device=device, dtype=torch.float32)


def single_call_denoiser(model, inputs: dict):
    """``(x, t) -> eps`` for timing one network call: FAST's denoiser as is; STAGE's two-branch
    denoiser on its anomaly-aware branch."""
    import inspect

    den, _ = model.sampling_plan(inputs["cond"], inputs["mask"], inputs["z_bg"])
    if "mask" in inspect.signature(den).parameters:
        return lambda x, t: den(x, t, mask=inputs["mask"])
    return den


def time_sampler(sampler, model, inputs, device, repeats: int, farm_fn) -> tuple[float, float]:
    """(median wall seconds of one run, FARM calls per run)."""
    farm = CountingFarm(farm_fn)
    walls = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        run_sampler(sampler, model, inputs, device, farm)
        _sync(device)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls), farm.calls / repeats


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast only when asked, so the default timings are the fp32 ones users run."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------ SDPA probe
_BACKEND_NAMES = {"FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "mem-efficient", "MATH": "math",
                  "CUDNN_ATTENTION": "cudnn"}


def _priority_order() -> list:
    from torch.nn.attention import SDPBackend

    getter = getattr(torch._C, "_get_sdp_priority_order", None)
    order = [SDPBackend(int(v)) for v in getter()] if getter is not None else [
        SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH, SDPBackend.CUDNN_ATTENTION]
    enabled = {"FLASH_ATTENTION": torch.backends.cuda.flash_sdp_enabled(),
               "EFFICIENT_ATTENTION": torch.backends.cuda.mem_efficient_sdp_enabled(),
               "MATH": torch.backends.cuda.math_sdp_enabled(),
               "CUDNN_ATTENTION": torch.backends.cuda.cudnn_sdp_enabled()}
    return [b for b in order if enabled.get(b.name, False)]


def probe_sdpa(fn) -> dict[str, str]:
    """Which backend serves each distinct attention call of ``fn()``.

    Every ``F.scaled_dot_product_attention`` call is intercepted and re-run under ``sdpa_kernel`` with
    one backend at a time, in the dispatcher's priority order; the first that runs is the one the
    default dispatch picks. Keys describe the call (shape, dtype, masked or not).
    """
    from torch.nn.attention import sdpa_kernel

    order = _priority_order()
    original = F.scaled_dot_product_attention
    seen: dict[str, str] = {}

    def spy(q, k, v, *args, **kwargs):
        key = (f"q{tuple(q.shape)} k{tuple(k.shape)} {str(q.dtype).replace('torch.', '')}"
               f"{' +mask' if kwargs.get('attn_mask') is not None else ''}")
        if key not in seen:
            seen[key] = "none"
            for backend in order:
                try:
                    with warnings.catch_warnings(), sdpa_kernel([backend]):
                        warnings.simplefilter("ignore")
                        original(q, k, v, *args, **kwargs)
                    seen[key] = _BACKEND_NAMES.get(backend.name, backend.name.lower())
                    break
                except RuntimeError:
                    continue
        return original(q, k, v, *args, **kwargs)

    F.scaled_dot_product_attention = spy
    try:
        fn()
    finally:
        F.scaled_dot_product_attention = original
    return seen


# ------------------------------------------------------------------------------------------ output
def format_table(rows: list[dict], extra: dict[str, dict]) -> str:
    head = f"{'sampler':<12}{'NFE':>6}{'s/image':>11}{'speed-up':>11}{'overhead':>10}{'ovh-FARM':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        e = extra[r["sampler"]]
        mark = "~" if e["estimated"] else " "
        lines.append(f"{r['sampler']:<12}{r['nfe']:>6}{mark}{r['seconds_per_image']:>10.4f}"
                     f"{r['speedup_vs_ddpm1000']:>10.1f}x{r['overhead']:>10.3f}{e['overhead_no_farm']:>10.3f}")
    return "\n".join(lines)


class Timed:
    """Wraps a callable and sums its synchronised wall time, to split a run into its parts."""

    def __init__(self, fn, device: torch.device):
        self.fn, self.device = fn, device
        self.calls, self.seconds = 0, 0.0

    def __call__(self, *args):
        _sync(self.device)
        t0 = time.perf_counter()
        out = self.fn(*args)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def profile_run(label, sampler, model, inputs, device, farm_fn, t_den: float, top: int = 15) -> str:
    """Where one run's time goes: network, FARM, and the sampler loop itself.

    1. a real run with timed wrappers around the denoiser and FARM: wall = network + FARM + rest;
    2. the same run with instant stub networks (precomputed tensors), so its wall time is the loop
       alone (guidance arithmetic, RNG draws, step bookkeeping), and a cProfile of that stub run.
    """
    den = Timed(model.denoiser(inputs["cond"], inputs["mask"]), device)
    farm = Timed(farm_fn, device)
    _sync(device)
    t0 = time.perf_counter()
    run_sampler(sampler, model, inputs, device, farm, denoiser=den)
    _sync(device)
    wall = time.perf_counter() - t0
    rest = wall - den.seconds - farm.seconds
    nfe = max(den.calls, 1)
    out = [f"{label}: wall {wall:.3f} s = network {den.seconds:.3f} s ({den.calls} calls, "
           f"{den.seconds / nfe * 1e3:.2f} ms/call in the loop vs {t_den * 1e3:.2f} ms isolated) + FARM "
           f"{farm.seconds:.3f} s ({farm.calls} calls, {farm.seconds / wall * 100:.1f} % of wall) + "
           f"rest {rest:.3f} s ({rest / wall * 100:.1f} %)"]

    eps = torch.randn(inputs["shape"], device=device)
    x0 = torch.randn(inputs["shape"], device=device)

    def stub_run():
        run_sampler(sampler, model, inputs, device, lambda x, m, t: x0, denoiser=lambda x, t: eps)

    loop = statistics.median(time_calls(stub_run, 3, device, warmup=1))
    out.append(f"sampler loop alone (stub networks): {loop * 1e3:.2f} ms per run = {loop / nfe * 1e3:.3f} ms "
               f"per network call = {loop / (nfe * t_den) * 100:.2f} % of t_denoiser")
    prof = cProfile.Profile()
    prof.enable()
    stub_run()
    _sync(device)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    out.append("cProfile of the stub run (own time):\n" + buf.getvalue().strip())
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ main
def main(argv=None) -> list[dict]:
    """Run the benchmark, print the table, write ``--json``; returns the rows."""
    a = parse_args(argv)
    threads = torch.get_num_threads()
    if a.threads is not None:
        torch.set_num_threads(max(1, a.threads))
    try:
        return _benchmark(a)
    finally:
        torch.set_num_threads(threads)


def _busy_cpu_hint() -> str | None:
    """A hint when other processes already fill the cores: torch's thread pool then stalls on
    descheduled threads and every timing (denoiser included) becomes erratic."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = os.cpu_count() or 1
    if torch.get_num_threads() > 1 and load >= cores:
        return (f"note: load average {load:.1f} on {cores} cores with {torch.get_num_threads()} torch threads; "
                "numbers will be erratic, --threads 1 is steadier on a shared CPU")
    return None


def _benchmark(a) -> list[dict]:
    device = a.device
    torch.manual_seed(a.seed)

    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f" | torch {torch.__version__} | CPU threads {torch.get_num_threads()} | batch size {a.batch_size}"
          + f" | bf16 autocast {'on' if a.bf16 else 'off'}", flush=True)
    hint = _busy_cpu_hint() if device.type == "cpu" else None
    if hint:
        print(hint, flush=True)
    print(f"config {a.config}; weights: "
          + (f"{a.ckpt}" if a.ckpt else "random (timing does not depend on weight values)"), flush=True)
    t0 = time.perf_counter()
    model = build_model(a.config, a.ckpt, device)
    schedule = model.schedule
    inputs = make_inputs(model, a.batch_size, device, a.seed)
    farm_fn = model.farm_fn() if hasattr(model, "farm_fn") else None  # STAGE has no FARM
    ref_label = f"ddpm:{schedule.num_timesteps}"
    specs = list(a.sampler_list)
    if ref_label not in [s[0] for s in specs]:
        specs.insert(0, (ref_label, "ddpm", schedule.num_timesteps))
    print(f"model built in {time.perf_counter() - t0:.1f} s; latents {tuple(inputs['shape'])}", flush=True)

    rows, extra = [], {}
    with torch.inference_mode(), autocast(device, a.bf16):
        den = single_call_denoiser(model, inputs)
        x = torch.randn(inputs["shape"], device=device)
        tvec = torch.full((a.batch_size,), schedule.num_timesteps // 2, dtype=torch.long, device=device)
        den_before = time_calls(lambda: den(x, tvec), a.denoiser_calls, device)
        t_farm = 0.0
        if farm_fn is not None:
            t_farm = statistics.median(time_calls(lambda: farm_fn(x, inputs["mask"], tvec), a.denoiser_calls, device))
        print(f"one denoiser call ({type(model).__name__} denoiser: UNet + adaptor, batch {a.batch_size}): "
              f"{statistics.median(den_before) * 1e3:.2f} ms median of {len(den_before)}; "
              f"one FARM call: {t_farm * 1e3:.2f} ms", flush=True)

        samplers = {}
        for label, name, steps in specs:
            try:
                samplers[label] = model.make_sampler(name, steps)
            except ValueError as e:
                raise ValueError(f"--samplers: {label}: {e}") from None
        ddpm_mode = a.ddpm_estimate
        if ddpm_mode == "auto":
            per_run = schedule.num_timesteps * (statistics.median(den_before) + t_farm)
            ddpm_mode = "off" if a.repeats * per_run <= DDPM_REAL_BUDGET_S else DDPM_AUTO_ESTIMATE_STEPS
            print(f"DDPM-{schedule.num_timesteps} predicted at {per_run:.0f} s per run x {a.repeats} "
                  f"repeat(s), budget {DDPM_REAL_BUDGET_S:.0f} s: "
                  + ("measured in full" if ddpm_mode == "off" else f"estimated from {ddpm_mode} steps"), flush=True)

        # t_denoiser is re-measured right before and after every sampler run, and repeats go round-robin
        # over the samplers: a shared machine's speed drifts over minutes, and this keeps each overhead
        # and each speed-up comparing like with like
        local_n = max(2, a.denoiser_calls // 2)
        timed = {}
        for label, _, _ in specs:
            sampler = samplers[label]
            estimated = label == ref_label and ddpm_mode != "off" and ddpm_mode < len(sampler.steps)
            timed[label] = (ddpm_subset(sampler, ddpm_mode) if estimated else sampler, estimated)
        walls = {label: [] for label in timed}
        farm_calls = {label: 0.0 for label in timed}
        around = {label: [] for label in timed}
        for r in range(a.repeats):
            for label, (sampler, estimated) in timed.items():
                around[label] += time_calls(lambda: den(x, tvec), local_n, device, warmup=0)
                wall, calls = time_sampler(sampler, model, inputs, device, 1, farm_fn)
                around[label] += time_calls(lambda: den(x, tvec), local_n, device, warmup=0)
                walls[label].append(wall)
                farm_calls[label] = calls
                print(f"  {label:<10} {wall:8.2f} s" + (f" for {len(sampler.steps)} steps" if estimated else "")
                      + f" (nfe {samplers[label].nfe})" + (f", repeat {r + 1}/{a.repeats}" if a.repeats > 1 else "")
                      + f"; t_denoiser around it {statistics.median(around[label][-2 * local_n:]) * 1e3:.2f} ms",
                      flush=True)
        measured = {}
        for label, (sampler, estimated) in timed.items():
            scale = len(samplers[label].steps) / len(sampler.steps)
            measured[label] = (statistics.median(walls[label]) * scale, farm_calls[label] * scale, estimated,
                               statistics.median(around[label]))

        ref = measured[ref_label][0]
        for label, _, _ in specs:
            wall, n_farm, estimated, t_den = measured[label]
            nfe = samplers[label].nfe
            rows.append({"sampler": label, "nfe": int(nfe), "seconds_per_image": wall / a.batch_size,
                         "overhead": wall / (nfe * t_den), "speedup_vs_ddpm1000": ref / wall})
            extra[label] = {"estimated": estimated,
                            "overhead_no_farm": (wall - n_farm * t_farm) / (nfe * t_den)}
        locals_ = [m[3] for m in measured.values()] + [statistics.median(den_before)]
        t_den = statistics.median(locals_)
        drift = max(locals_) / min(locals_) - 1.0

        print()
        print(f"t_denoiser = {t_den * 1e3:.2f} ms (median over the run; range {min(locals_) * 1e3:.2f} to "
              f"{max(locals_) * 1e3:.2f}); t_FARM = {t_farm * 1e3:.2f} ms")
        if drift > 0.05:
            print(f"WARNING: the denoiser time varied {drift * 100:.0f} % during the run (busy machine?); speed-ups "
                  "and overheads are uncertain by up to as much (--repeats N, round-robin, helps)")
        print(format_table(rows, extra))
        print("overhead = wall / (NFE x t_denoiser), target <= 1.05; ovh-FARM = the same without the "
              "guidance's FARM calls" + ("; ~ = extrapolated from a subset of steps (--ddpm_estimate)"
                                         if any(e["estimated"] for e in extra.values()) else ""))
        aias10 = next((r for r in rows if r["sampler"] == "aias:10"), None)
        if aias10 is not None:
            print(f"AIAS-10 vs DDPM-1000: {aias10['speedup_vs_ddpm1000']:.1f}x (target >= 90x)")

        if device.type == "cuda":
            _cuda_extras(den, x, tvec, device, a)
        else:
            print("bf16 autocast timing and SDPA backend probe: skipped (CPU; they are CUDA-only)")

        if a.profile is not None:
            if farm_fn is None:
                raise UserError(f"--profile: the per-part profile is for FAST models, not {type(model).__name__}")
            if a.profile not in samplers:
                raise ValueError(f"--profile: '{a.profile}' is not one of the benchmarked samplers")
            sampler = samplers[a.profile]
            if a.profile == ref_label and ddpm_mode != "off":
                sampler = ddpm_subset(sampler, ddpm_mode)
            print(f"\n--profile {a.profile}")
            print(profile_run(a.profile, sampler, model, inputs, device, farm_fn, t_den))

    if a.json:
        write_text_atomic(a.json, json.dumps(rows, indent=2) + "\n")
        print(f"wrote {a.json}")
    return rows


def _cuda_extras(den, x, tvec, device, a) -> None:
    """bf16 autocast timing of the denoiser and the SDPA backend of each attention call."""
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        t_bf16 = statistics.median(time_calls(lambda: den(x, tvec), a.denoiser_calls, device))
    with torch.autocast(device_type="cuda", enabled=False):
        t_fp32 = statistics.median(time_calls(lambda: den(x, tvec), a.denoiser_calls, device))
    print(f"denoiser fp32 {t_fp32 * 1e3:.2f} ms, bf16 autocast {t_bf16 * 1e3:.2f} ms "
          f"({t_fp32 / t_bf16:.2f}x)")
    for label, enabled in (("fp32", False), ("bf16 autocast", True)):
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=enabled):
            seen = probe_sdpa(lambda: den(x, tvec))
        for call, backend in seen.items():
            print(f"SDPA [{label}] {call}: {backend}")
        if not seen:
            print(f"SDPA [{label}]: no attention call in the denoiser")



def cli(argv=None) -> int:
    """``scripts/benchmark_samplers.py``: user errors print one line and return 2; bugs keep their traceback."""
    return run_cli("benchmark_samplers.py", lambda: main(argv) and 0)
