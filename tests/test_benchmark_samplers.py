"""The sampler benchmark (ldm/benchmarks/samplers.py, run by scripts/benchmark_samplers.py): argument handling,
the DDPM subset estimate, the SDPA probe, and one short end-to-end run on the tiny FAST config (CPU).
Structure only: columns, NFE counts, and that the speed-ups are ratios of the very wall times the same run
reports. Which sampler is faster is a timing claim; it belongs to the benchmark's printed output, not to a
test on a shared machine."""
import json

import pytest
import torch

from ldm.benchmarks.samplers import JSON_KEYS, ddpm_subset, main, parse_args, parse_sampler_list, probe_sdpa
from ldm.models.diffusion.sampler_registry import build_sampler
from ldm.models.diffusion.samplers import DDPMSampler
from ldm.models.diffusion.schedule import NoiseSchedule

SCH = NoiseSchedule.from_config("linear", 1000, 0.00085, 0.012)


def test_sampler_list_parsing_and_errors():
    assert parse_sampler_list("ddpm:1000, aias:10,plms:50") == [
        ("ddpm:1000", "ddpm", 1000), ("aias:10", "aias", 10), ("plms:50", "plms", 50)]
    for bad in ("ddim", "ddim:x", "euler:10", "ddim:0", "ddim:5,ddim:5", ""):
        with pytest.raises(ValueError, match="--samplers"):
            parse_sampler_list(bad)


def test_cli_refuses_bf16_on_cpu_and_bad_estimate():
    with pytest.raises(ValueError, match="--bf16"):
        parse_args(["--device", "cpu", "--bf16"])
    with pytest.raises(ValueError, match="--ddpm_estimate"):
        parse_args(["--device", "cpu", "--ddpm_estimate", "sometimes"])
    a = parse_args(["--device", "cpu"])
    assert a.ddpm_estimate == "auto" and a.batch_size == 8
    assert [s[0] for s in a.sampler_list] == ["ddpm:1000", "ddim:50", "plms:50", "aias:50", "aias:10"]


def test_ddpm_subset_spreads_steps_like_the_full_chain():
    full = DDPMSampler(SCH)
    sub = ddpm_subset(full, 50)
    assert len(sub.steps) == 50 and len(full.steps) == 1000  # the original is untouched
    assert sub.steps[0] == full.steps[0] and sub.steps[-1] == full.steps[-1]

    def window_share(steps):  # official write-back window 250 < t_e < 750
        return sum(250 < s.t_e < 750 for s in steps) / len(steps)

    assert abs(window_share(sub.steps) - window_share(full.steps)) < 0.03


def test_sdpa_probe_records_calls_and_restores_the_function():
    from ldm.modules.attention import CrossAttention

    before = torch.nn.functional.scaled_dot_product_attention
    self_attn = CrossAttention(query_dim=16, heads=2, dim_head=8).eval()
    cross_attn = CrossAttention(query_dim=16, context_dim=8, heads=2, dim_head=8).eval()
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, 8)
    with torch.no_grad():
        seen = probe_sdpa(lambda: (self_attn(x), cross_attn(x, context=ctx)))
    assert torch.nn.functional.scaled_dot_product_attention is before
    assert len(seen) == 2
    assert set(seen.values()) <= {"flash", "mem-efficient", "math", "cudnn", "none"}


def test_main_on_the_tiny_config(tmp_path, capsys):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    rows = main(["--device", "cpu", "--batch_size", "1", "--samplers", "ddim:10,plms:3,aias:3",
                 "--ddpm_estimate", "4", "--denoiser_calls", "2", "--threads", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    assert torch.get_num_threads() == threads  # --threads is undone on return
    assert json.loads(out.read_text()) == rows
    assert [r["sampler"] for r in rows] == ["ddpm:1000", "ddim:10", "plms:3", "aias:3"]  # reference added
    for r in rows:
        assert tuple(sorted(r)) == tuple(sorted(JSON_KEYS))
        assert r["seconds_per_image"] > 0 and r["overhead"] > 0 and r["speedup_vs_ddpm1000"] > 0
        name, steps = r["sampler"].split(":")
        assert r["nfe"] == build_sampler(name, SCH, steps=int(steps)).nfe  # the sampler's own count
    nfe = {r["sampler"]: r["nfe"] for r in rows}
    assert nfe == {"ddpm:1000": 1000, "ddim:10": 10, "plms:3": 5, "aias:3": 3}
    # every speed-up is the reference's wall time over this sampler's, both from this run's rows
    ref = rows[0]["seconds_per_image"]
    for r in rows:
        assert r["speedup_vs_ddpm1000"] == pytest.approx(ref / r["seconds_per_image"], rel=1e-12), r
    assert rows[0]["speedup_vs_ddpm1000"] == pytest.approx(1.0, rel=1e-12)
    # the printed table shows the same numbers as the returned rows
    for r in rows:
        assert f"{r['speedup_vs_ddpm1000']:.1f}x" in printed and f"{r['overhead']:.3f}" in printed, r
    assert "1000~" in printed and "random" in printed and "skipped (CPU" in printed
