"""The full-size text2img-large config reproduces the released checkpoint's keys, shapes and schedule.

The checkpoint's facts are vendored in tests/data (see tests/reference_manifest.py), so this runs on
any clone; every expectation comes from the released checkpoint, never from the model under test.
"""
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config
from tests.reference_manifest import checkpoint_dtypes, checkpoint_groups, checkpoint_keys, facts

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "latent-diffusion" / "txt2img-1p4B-eval.yaml"
DTYPES = {"float32": torch.float32, "int32": torch.int32, "int64": torch.int64}


def _build(**param_overrides):
    cfg = OmegaConf.load(CONFIG)
    cfg.model.params.cond_stage_config.params.use_tokenizer = False  # no vocab needed for shapes
    for k, v in param_overrides.items():
        cfg.model.params[k] = v
    with torch.device("meta"):
        return instantiate_from_config(cfg.model)


@pytest.fixture(scope="module")
def meta_model():
    return _build()


def _released_state_dict():
    """The released checkpoint's state dict as meta tensors of the recorded shapes and dtypes."""
    dtypes = checkpoint_dtypes()
    return {k: torch.empty(shape, dtype=DTYPES[dtypes[k]], device="meta") for k, shape in checkpoint_keys().items()}


def test_manifest_is_the_released_checkpoint():
    groups = {}
    for g in checkpoint_groups().values():
        groups[g] = groups.get(g, 0) + 1
    assert groups == {"unet": 686, "first_stage": 248, "cond_stage": 422, "schedule": 12, "extra": 2}
    assert groups == {k: v for k, v in facts()["key_counts"].items() if k in groups}


def test_state_dict_keys_and_shapes_equal_manifest(meta_model):
    groups = checkpoint_groups()
    expected = {k: s for k, s in checkpoint_keys().items() if groups[k] != "extra"}
    got = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:10], sorted(set(expected) - set(got))[:10])
    for k, shape in expected.items():
        assert got[k] == shape, k


def test_parameter_counts(meta_model):
    counts = facts()["parameter_counts"]
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(meta_model.model) == counts["unet"]
    assert n(meta_model.first_stage_model) == counts["first_stage"]
    assert n(meta_model.cond_stage_model) == counts["cond_stage"]


def test_released_checkpoint_loads_with_only_the_ema_scalars_unexpected():
    """The released checkpoint, loaded non-strictly, reports exactly model_ema.decay / num_updates as
    unexpected and nothing missing; its shapes all fit (load_state_dict raises on a mismatch)."""
    model = _build()
    missing, unexpected = model.load_state_dict(_released_state_dict(), strict=False, assign=True)
    assert missing == []
    assert sorted(unexpected) == ["model_ema.decay", "model_ema.num_updates"]
    assert {k for k, g in checkpoint_groups().items() if g == "extra"} == set(unexpected)


def test_ema_model_uses_the_released_model_ema_names():
    """With use_ema the model adds CompVis LitEma buffers: the released checkpoint's two model_ema
    scalars (same dtypes) plus one shadow per UNet parameter, named after it with the dots removed."""
    model = _build(use_ema=True)
    sd = model.state_dict()
    ema = {k: v for k, v in sd.items() if k.startswith("model_ema.")}
    released = {k: s for k, s in checkpoint_keys(group="extra").items()}
    dtypes = checkpoint_dtypes()
    for k, shape in released.items():
        assert k in ema and tuple(ema[k].shape) == shape and ema[k].dtype == DTYPES[dtypes[k]], k
    unet = checkpoint_keys(group="unet", prefix="model.")
    shadows = {"model_ema." + k.replace(".", ""): shape for k, shape in unet.items()}
    assert len(shadows) == len(unet)  # dot removal keeps the names distinct
    assert {k: tuple(v.shape) for k, v in ema.items() if k not in released} == shadows
    # the released non-EMA weights still load with nothing unexpected but the scalars
    missing, unexpected = model.load_state_dict(_released_state_dict(), strict=False, assign=True)
    assert sorted(unexpected) == [] and sorted(missing) == sorted(shadows)


def test_schedule_buffers_match_reference_values():
    from ldm.models.diffusion.schedule import NoiseSchedule

    ref = facts()
    sc = ref["schedule_config"]
    s = NoiseSchedule.from_config(sc["beta_schedule"], sc["timesteps"], sc["linear_start"], sc["linear_end"])
    bufs = s.buffers()
    assert set(ref["schedule_float64"]) == set(checkpoint_keys(group="schedule"))
    for name, stats in ref["schedule_float64"].items():
        v = bufs[name]
        assert v.dtype == torch.float64
        assert v.sum().item() == pytest.approx(stats["sum"], rel=1e-12, abs=1e-12), name
        assert v[0].item() == pytest.approx(stats["first"], rel=1e-12, abs=1e-15), name
        assert v[499].item() == pytest.approx(stats["index_499"], rel=1e-12, abs=1e-15), name
        assert v[-1].item() == pytest.approx(stats["last"], rel=1e-12, abs=1e-15), name
    for name, stats in ref["schedule_float32_stored"].items():
        v32 = bufs[name].to(torch.float32).double()
        assert v32.sum().item() == pytest.approx(stats["sum"], rel=1e-9), name


def test_model_registers_schedule_as_persistent_float32_buffers(meta_model):
    sd = meta_model.state_dict()
    dtypes = checkpoint_dtypes()
    for name in checkpoint_keys(group="schedule"):
        assert sd[name].dtype == DTYPES[dtypes[name]] == torch.float32, name
    assert "lvlb_weights" not in sd and "logvar" not in sd and "scale_factor" not in sd
