"""The full-size text2img-large config reproduces the released checkpoint's keys, shapes and schedule."""
import csv
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT.parent / "shared" / "reference"
CONFIG = ROOT / "configs" / "latent-diffusion" / "txt2img-1p4B-eval.yaml"

pytestmark = pytest.mark.skipif(not (REF / "ldm-txt2img-large-state-dict.tsv").is_file(),
                                reason="shared/reference manifest not available")


def _manifest():
    rows = list(csv.DictReader(open(REF / "ldm-txt2img-large-state-dict.tsv"), delimiter="\t"))
    out = {}
    for r in rows:
        shape = () if r["shape"] in ("-", "") else tuple(int(s) for s in r["shape"].split("x"))
        out[r["key"]] = (shape, r["group"])
    return out


@pytest.fixture(scope="module")
def meta_model():
    cfg = OmegaConf.load(CONFIG)
    cfg.model.params.cond_stage_config.params.use_tokenizer = False  # no vocab needed for shapes
    with torch.device("meta"):
        model = instantiate_from_config(cfg.model)
    return model


def test_state_dict_keys_and_shapes_equal_manifest(meta_model):
    ref = _manifest()
    expected = {k: s for k, (s, g) in ref.items() if g != "extra"}
    got = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
    assert set(got) == set(expected), (sorted(set(got) - set(expected))[:10], sorted(set(expected) - set(got))[:10])
    for k, shape in expected.items():
        assert got[k] == shape, k
    groups = {}
    for k, (_, g) in ref.items():
        groups[g] = groups.get(g, 0) + 1
    assert groups == {"unet": 686, "first_stage": 248, "cond_stage": 422, "schedule": 12, "extra": 2}


def test_parameter_counts(meta_model):
    counts = json.load(open(REF / "ldm-txt2img-large-schedule.json"))["parameter_counts"]
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(meta_model.model) == counts["unet"]
    assert n(meta_model.first_stage_model) == counts["first_stage"]
    assert n(meta_model.cond_stage_model) == counts["cond_stage"]


def test_only_ema_scalars_are_unexpected(meta_model):
    """Loading the real checkpoint non-strictly reports exactly model_ema.decay / num_updates."""
    sd = {k: torch.empty(0, device="meta") for k in meta_model.state_dict()}
    sd["model_ema.decay"] = torch.tensor(0.9999)
    sd["model_ema.num_updates"] = torch.tensor(0, dtype=torch.int)
    own = set(meta_model.state_dict())
    assert sorted(set(sd) - own) == ["model_ema.decay", "model_ema.num_updates"]
    assert not own - set(sd)


def test_schedule_buffers_match_reference_values():
    from ldm.models.diffusion.schedule import NoiseSchedule

    ref = json.load(open(REF / "ldm-txt2img-large-schedule.json"))
    sc = ref["schedule_config"]
    s = NoiseSchedule.from_config(sc["beta_schedule"], sc["timesteps"], sc["linear_start"], sc["linear_end"])
    bufs = s.buffers()
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
    for name in ("betas", "alphas_cumprod", "posterior_mean_coef2", "posterior_log_variance_clipped"):
        assert sd[name].dtype == torch.float32
    assert "lvlb_weights" not in sd and "logvar" not in sd and "scale_factor" not in sd
