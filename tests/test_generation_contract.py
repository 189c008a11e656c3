"""The generation contract of the masked models (``ldm.models.diffusion.masked``) and the one sampler
registry (``ldm.models.diffusion.sampler_registry``): every model refuses a sampler outside its set, a
``t_start`` that is not its sampler's and an unknown guidance option with the same one-line error,
before any network runs."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ldm.models.diffusion.sampler_registry import SAMPLERS, build_sampler, sampler_class
from ldm.models.diffusion.samplers import BatchRNG
from ldm.models.diffusion.schedule import NoiseSchedule
from ldm.util import instantiate_from_config
from tests.tiny_configs import fast_config, grounding_config, stage_config
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"FAST": fast_config, "STAGE": stage_config, "GroundingAnomaly": grounding_config}
NAME = "tex+scratch"


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request):
    torch.manual_seed(0)
    return instantiate_from_config(MODELS[request.param]()).eval()


def _inputs():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 8:20] = 1
    return images, masks


def _generate(model, sampler, **kw):
    images, masks = _inputs()
    return model.generate(images, masks, ["Anomaly *"] * 2, [NAME] * 2, sampler, BatchRNG([0, 1]), **kw)


def test_every_name_builds_its_registered_class():
    schedule = NoiseSchedule.from_config("linear", 1000, 0.00085, 0.012)
    for name in SAMPLERS:
        steps = None if name == "ddpm" else 10
        assert type(build_sampler(name, schedule, steps=steps)) is sampler_class(name)
    with pytest.raises(UserError, match=r"^build_sampler: sampler must be one of aias, ddpm, ddim, plms, stage, "
                                        r"got 'euler'$"):
        build_sampler("euler", schedule)


def test_the_registry_loads_without_torch():
    # command lines list the sampler names before (and without) loading torch
    code = "import sys, ldm.models.diffusion.sampler_registry as r; print(r.SAMPLERS, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False"


def test_each_model_declares_its_samplers_and_defaults_to_the_first(model):
    assert model.samplers and set(model.samplers) <= set(SAMPLERS)
    default = model.make_sampler(None, 10)
    assert type(default) is type(model.make_sampler(model.samplers[0], 10))


def test_a_sampler_outside_the_model_set_is_the_same_one_line_error(model):
    name = type(model).__name__
    for outside in [n for n in SAMPLERS if n not in model.samplers] + ["euler"]:
        with pytest.raises(UserError) as e:
            model.make_sampler(outside, 10)
        assert str(e.value) == f"{name}: sampler must be one of {', '.join(model.samplers)}, got '{outside}'"


def test_ddpm_runs_every_timestep_for_every_model(model):
    with pytest.raises(UserError, match=r"^ddpm always runs every timestep \(steps=1000 or none\), got steps=10$"):
        model.make_sampler("ddpm", 10)
    assert model.make_sampler("ddpm", model.num_timesteps).nfe == model.make_sampler("ddpm").nfe


def test_generate_refuses_before_any_network_call(model, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network ran before the request was checked")

    monkeypatch.setattr(model, "encode_to_latent", no_network)
    name = type(model).__name__
    sampler = model.make_sampler(None, 10)
    with pytest.raises(UserError, match=r"^t_start=3 but the sampler starts at (None|\d+); build the sampler "
                                        r"with the same t_start$"):
        _generate(model, sampler, t_start=3)
    with pytest.raises(UserError, match=rf"^{name}\.generate: unknown guidance_kw \['pasted'\] \(takes "):
        _generate(model, sampler, guidance_kw={"pasted": True})
    # a sampler of the other family (one-branch vs STAGE's two-branch loop) is a bug, not a user error
    other = build_sampler("aias" if name == "STAGE" else "stage", model.schedule, steps=10)
    with pytest.raises(TypeError, match=rf"^{name}\.generate needs a"):
        _generate(model, other)


def _fixed_inputs():
    g = torch.Generator().manual_seed(3)
    images = torch.rand(2, 3, 32, 32, generator=g) * 1.6 - 0.8  # room for a colour cast below +-1
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 8:20] = 1
    return images, masks


def _guided(model, captions, **kw):
    images, masks = _fixed_inputs()
    sampler = model.make_sampler(None, 6)
    with torch.no_grad():
        return model.generate(images, masks, captions, [NAME] * 2, sampler, BatchRNG([0, 1]), **kw)


def test_guidance_scale_interpolates_between_the_negative_and_the_prompt(model):
    """s = 1 is the prompt alone whatever the negative; s = 0 is the negative caption alone (ε_u + 0·(ε_c − ε_u));
    any other s differs from both."""
    import copy

    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an untrained UNet's zero-initialised output layers ignore the caption: wake them
        for p in model.parameters():
            if p.abs().sum() == 0:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    prompt, negative = ["Anomaly *"] * 2, ["a photo of grass"] * 2
    plain = _guided(model, prompt)
    assert torch.equal(_guided(model, prompt, guidance_scale=1.0, negative_captions=negative), plain)
    assert torch.equal(_guided(model, prompt, guidance_scale=0.0, negative_captions=negative),
                       _guided(model, negative))
    strong = _guided(model, prompt, guidance_scale=4.0, negative_captions=negative)
    assert not torch.allclose(strong, plain) and not torch.allclose(strong, _guided(model, negative))


def test_guidance_refusals_come_before_any_network_call(model, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network ran before the request was checked")

    monkeypatch.setattr(model, "encode_to_latent", no_network)
    name = type(model).__name__
    with pytest.raises(UserError, match=rf"^{name}\.generate: guidance_scale must be >= 0, got -1\.0$"):
        _guided(model, ["Anomaly *"] * 2, guidance_scale=-1.0)
    with pytest.raises(UserError, match=rf"^{name}\.generate: guidance_scale must be >= 0, got nan$"):
        _guided(model, ["Anomaly *"] * 2, guidance_scale=float("nan"))
    with pytest.raises(UserError, match=rf"^{name}\.generate: 1 negative captions for 2 captions$"):
        _guided(model, ["Anomaly *"] * 2, guidance_scale=2.0, negative_captions=[""])


def test_pasting_models_paste_as_decoded_by_default_and_match_on_request(model, monkeypatch):
    """FAST and GroundingAnomaly paste the decoded region as it is by default (the official composite): a
    decoder that returns the normal image plus a colour cast keeps the cast inside the mask; with
    ``paste_colour='match'`` the cast, measured outside the mask, is taken away and the normal image comes
    back. STAGE's official output is the decoded image itself."""
    images, masks = _fixed_inputs()
    cast = torch.tensor([0.02, 0.11, 0.10]).view(1, 3, 1, 1)
    monkeypatch.setattr(model, "decode_first_stage", lambda z: images + cast)
    raw = _guided(model, ["Anomaly *"] * 2)
    matched = _guided(model, ["Anomaly *"] * 2, paste_colour="match")
    if not model.paste:
        assert torch.equal(matched, raw) and torch.allclose(raw, (images + cast).clamp(-1, 1))
        return
    inside = (masks == 1).expand_as(images)
    assert torch.equal(matched[~inside], images[~inside]) and torch.equal(raw[~inside], images[~inside])
    assert torch.allclose(matched[inside], images[inside], atol=1e-6)
    assert torch.allclose(raw[inside], (images + cast).clamp(-1, 1)[inside], atol=1e-6)
    with pytest.raises(UserError, match=rf"^{type(model).__name__}\.generate: paste_colour must be one of raw, "
                                        r"match, got 'mean'$"):
        _guided(model, ["Anomaly *"] * 2, paste_colour="mean")
