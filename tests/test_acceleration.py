"""bf16 and compiled generation: what a pair may differ by, and what it may not.

Tolerance: a pair's pixels inside the mask may move by at most ``TOLERANCE`` of 255 against fp32 eager.
bf16 keeps 8 bits of mantissa (relative error 2^-9 per rounding); on the tiny model the measured worst
case over 8 pairs was 4/255 for bf16 and 0/255 for compiled fp32 (``/tmp/measure_acc.py`` style run,
recorded in the issue note), so 16/255 leaves room for other CPUs' kernels without letting a broken
path (another noise draw, a missing FARM call: differences of 50-200/255) through. Outside the mask
every pixel is the normal image's, bit for bit, whatever the precision: the paste runs in float32.

Compilation here: on a CUDA machine (``scripts/gpu_check.sh``) inductor with CUDA graphs, the real thing;
on the CPU, dynamo tracing with the ``aot_eager`` backend (inductor's C++ build of the tiny UNet takes
~3 minutes on 2 cores): the same capture, padding and no-recompile logic, without inductor's kernels.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import generate_with_mask
import ldm.generation as generation
from tests.run_fixture import gen_args, make_dataset, make_run
from utils.acceleration import Acceleration
from utils.errors import UserError

TOLERANCE = 16
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKEND = "inductor" if DEVICE == "cuda" else "aot_eager"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("accel")
    data = make_dataset(work / "data")
    return work, data, make_run(work, data)


@pytest.fixture
def backend(monkeypatch):
    real = generation.acceleration
    monkeypatch.setattr(generation, "acceleration",
                        lambda opt: Acceleration(real(opt).precision, real(opt).compile, backend=BACKEND))


def _generate(setup, name, *extra, n=5, batch=2):
    work, data, ck = setup
    out = work / name
    args = gen_args(data, ck, out, "--n_samples", str(n), "--batch_size", str(batch), *extra)
    args[args.index("--device") + 1] = DEVICE
    result = generate_with_mask.main(args)
    return out / "brick" / "scratch", result


def _pair(root, n):
    strip = np.asarray(Image.open(root / "image-mask-ori" / f"{n}.png")).astype(int)
    w = strip.shape[1] // 3
    return strip[:, :w], strip[:, w:2 * w, 0] > 127, strip[:, 2 * w:]


def _compare(ref_root, root, n):
    for i in range(n):
        a, mask, original = _pair(ref_root, i)
        b, mask_b, original_b = _pair(root, i)
        assert (mask == mask_b).all() and (original == original_b).all()
        assert (b[~mask] == original[~mask]).all(), f"pair {i}: a pixel outside the mask changed"
        diff = int(np.abs(a - b)[mask].max())
        assert diff <= TOLERANCE, f"pair {i}: {diff}/255 inside the mask (tolerance {TOLERANCE})"


@pytest.fixture(scope="module")
def fp32(setup):
    return _generate(setup, "fp32")[0]


def test_bf16_pairs_match_fp32_within_tolerance_and_keep_the_background(setup, fp32):
    root, result = _generate(setup, "bf16", "--precision", "bf16")
    assert result["written"] == 5 and result["precision"] == "bf16"
    _compare(fp32, root, 5)
    assert json.loads((root / "synthesis.json").read_text())["precision"] == "bf16"
    assert "precision" not in json.loads((fp32 / "synthesis.json").read_text())  # old fp32 folders stay valid


def test_a_bf16_rerun_into_an_fp32_folder_is_refused(setup, fp32):
    work, data, ck = setup
    args = gen_args(data, ck, fp32.parent.parent, "--precision", "bf16")
    with pytest.raises(UserError, match="precision"):
        generate_with_mask.main(args)


def test_compiled_pairs_match_eager_with_a_padded_last_batch_and_no_recompilation(setup, fp32, backend):
    from torch._dynamo.utils import counters

    counters.clear()
    root, result = _generate(setup, "compiled", "--compile", n=5, batch=2)  # batches 2, 2, 1 (+1 padding)
    assert result["written"] == 5 and result["compile"] is True
    _compare(fp32, root, 5)
    assert sorted(p.name for p in (root / "image").iterdir()) == [f"{i}.png" for i in range(5)]
    # one graph per compiled module (UNet, FARM): the padded last batch and the latents' memory layouts
    # did not trigger a second compilation
    assert counters["stats"]["unique_graphs"] == 2, dict(counters["stats"])


def test_compiling_keeps_parameter_names_and_happens_once(setup):
    from ldm.generation import build_model
    from tests.tiny_configs import fast_config

    model = build_model(fast_config(names=["brick+scratch"]))
    keys = list(model.state_dict())
    accel = Acceleration("fp32", True, backend="aot_eager")
    assert accel.prepare(model, "cpu") == ["model.diffusion_model", "FARM"]
    assert accel.prepare(model, "cpu") == []
    assert list(model.state_dict()) == keys


def test_options_are_checked():
    with pytest.raises(UserError, match="--precision"):
        Acceleration("fp16")
    assert Acceleration("bf16").lightning_precision == "bf16-mixed"
    assert Acceleration().lightning_precision == "32-true"
    with pytest.raises(UserError, match="--batch_size"):
        generate_with_mask.get_parser().parse_args(["--data_root", "x", "--sample_name", "a", "--anomaly_name", "b",
                                                    "--pt_path", "c", "--batch_size", "0"])


def test_auto_batch_is_eight_on_the_cpu(setup):
    opt = generation.GenerationOptions(pt_path="-", sample_name="a", anomaly_name="b", data_root="-")
    assert opt.batch_size == "auto"
    assert generation.resolve_batch_size(opt, None, {}, torch.device("cpu")) == 8


def test_training_in_bf16_runs_bf16_mixed_and_writes_finite_artifacts(tmp_path):
    """``main.py --precision bf16``: Lightning's bf16-mixed (bf16 autocast, fp32 weights and optimizer)."""
    from tests.run_fixture import train_fast_run
    from utils.safe_load import safe_load

    data = make_dataset(tmp_path / "data")
    trainer, model, ckdir = train_fast_run(tmp_path, data, "--precision", "bf16", steps=2)
    assert trainer.global_step == 2 and str(trainer.precision) == "bf16-mixed"
    assert all(p.dtype == torch.float32 for p in model.FARM.parameters())
    farm = safe_load(ckdir / "FARM-2.safetensors")
    assert farm and all(torch.isfinite(v).all() for v in farm.values() if v.is_floating_point())
