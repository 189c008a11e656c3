"""Samplers end to end with stub denoisers: laws, identities, guidance hooks, RNG, CompVis adapters."""
import math

import pytest
import torch

from ldm.models.diffusion.ddim import DDIMSampler as CompVisDDIM
from ldm.models.diffusion.ddim import make_denoiser
from ldm.models.diffusion.plms import PLMSSampler as CompVisPLMS
from ldm.models.diffusion.sampler_registry import build_sampler
from ldm.models.diffusion.samplers import (AIASSampler, BatchRNG, DDIMSteps, DDPMSampler, MaskGuidance, PLMSSteps,
                                           paste, segment_coefficients)
from ldm.models.diffusion.samplers.rng import as_batch_rng
from ldm.models.diffusion.schedule import NoiseSchedule

SCH = NoiseSchedule.from_config("linear", 1000, 0.00085, 0.012)
F64 = torch.float64


class FixedX0:
    """Denoiser whose x0_hat is always ``x0``: returns the eps consistent with x0 from its input."""

    def __init__(self, schedule, x0):
        ab = schedule.alphas_cumprod
        self.sab, self.s1m = ab.sqrt(), (1 - ab).sqrt()
        self.x0 = x0
        self.calls = []

    def __call__(self, x, t):
        self.calls.append(int(t[0]))
        shape = (-1,) + (1,) * (x.ndim - 1)
        sab = self.sab.to(x)[t].view(shape)
        s1m = self.s1m.to(x)[t].view(shape)
        return (x - sab * self.x0.to(x)) / s1m


def smooth_stub(x, t):
    """A deterministic, per-sample, non-linear eps model."""
    return torch.tanh(x) * (0.5 + t.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) / 2000)


def farm_stub(x, mask, t):
    assert t.dtype == torch.long and t.shape == (x.shape[0],)
    assert mask.shape[0] == x.shape[0]
    return 0.5 * torch.sin(x) + 0.1


def half_mask(b=1, h=8, w=8, dtype=F64):
    m = torch.zeros(b, 1, h, w, dtype=dtype)
    m[..., :, w // 2:] = 1.0
    return m


# --- kernels in action -------------------------------------------------------------------------
def _one_segment(t_s, t_e, kind, x_ts, x0, n=200_000, seed=0):
    """Run only the first AIAS segment t_s -> t_e and capture the state there."""
    sampler = AIASSampler(SCH, segments=1, refine_steps=t_e + 1, t_start=t_s, kernel=kind)
    assert sampler.boundaries == [t_s, t_e]
    sampler.steps = sampler.steps[:1]  # drop the t_e+1 refinement steps: only the segment is under test
    seen = {}

    def grab(i, te, x, x0_hat):
        if i == 0:
            seen["x"] = x.clone()

    x_T = torch.full((n, 1), x_ts, dtype=F64)
    sampler.sample(FixedX0(SCH, torch.tensor(x0, dtype=F64)), (n, 1), rng=torch.Generator().manual_seed(seed),
                   x_T=x_T, callback=grab)
    return seen["x"].flatten()


@pytest.mark.parametrize("t_s,t_e", [(999, 1), (699, 599), (21, 1)])
def test_segment_law_matches_exact_posterior(t_s, t_e):
    x_ts, x0, n = 0.4, 0.7, 200_000
    pi, sigma, var = segment_coefficients(SCH, t_s, t_e, "exact")
    x = _one_segment(t_s, t_e, "exact", x_ts, x0, n)
    mean, emp_var = x.mean().item(), x.var().item()
    z_mean = (mean - (pi * x_ts + sigma * x0)) / math.sqrt(var / n)
    z_var = (emp_var - var) / (var * math.sqrt(2.0 / n))
    assert abs(z_mean) < 4 and abs(z_var) < 4


def test_paper_kernel_fails_the_posterior_law():
    pi, sigma, var = segment_coefficients(SCH, 21, 1, "exact")
    x = _one_segment(21, 1, "paper", 0.4, 0.7, 100_000)
    z_var = (x.var().item() - var) / (var * math.sqrt(2.0 / 100_000))
    assert z_var > 50  # printed V is 4.2x too large at 22->2


@pytest.mark.parametrize("kind", ["exact", "paper"])
def test_full_aias_chain_returns_fixed_x0(kind):
    x0 = torch.randn(2, 4, 8, 8, dtype=F64, generator=torch.Generator().manual_seed(3))
    sampler = AIASSampler(SCH, kernel=kind)
    out = sampler.sample(FixedX0(SCH, x0), x0.shape, rng=BatchRNG([1, 2]), dtype=F64)
    assert torch.allclose(out, x0, atol=1e-10, rtol=0)


def test_ddpm_chain_returns_fixed_x0_and_nfe():
    x0 = torch.randn(1, 2, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(4))
    den = FixedX0(SCH, x0)
    sampler = DDPMSampler(SCH)
    out = sampler.sample(den, x0.shape, rng=[5], dtype=F64)
    assert sampler.nfe == 1000 and len(den.calls) == 1000 and den.calls[:2] == [999, 998]
    assert torch.allclose(out, x0, atol=1e-10, rtol=0)


def test_ddim_eta1_on_aias_grid_equals_aias_exact():
    aias = AIASSampler(SCH, segments=48, refine_steps=2, kernel="exact")
    ddim = DDIMSteps(SCH, eta=1.0, timesteps=aias.boundaries + [0])
    assert [(s.t_s, s.t_e) for s in ddim.steps] == [(s.t_s, s.t_e) for s in aias.steps]
    shape = (2, 4, 8, 8)
    z_bg = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(9))
    guide = MaskGuidance.official(half_mask(2), z_bg)  # write-back only; never fires at t_e <= 1
    a = aias.sample(smooth_stub, shape, rng=BatchRNG([7, 8]), guidance=guide, dtype=F64)
    d = ddim.sample(smooth_stub, shape, rng=BatchRNG([7, 8]), guidance=guide, dtype=F64)
    assert torch.allclose(a, d, atol=1e-10, rtol=0)


def test_ddim_eta0_and_plms_follow_the_deterministic_ode():
    # with a fixed-x0 oracle, eta=0 DDIM keeps eps constant, so the last state is known in closed form;
    # every PLMS combination of equal eps is that eps again, so PLMS lands on the same point
    x0 = torch.randn(2, 3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(2, 3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(2))
    ab = SCH.alphas_cumprod
    eps = (x_T - ab[981].sqrt() * x0) / (1 - ab[981]).sqrt()
    expect = ab[0].sqrt() * x0 + (1 - ab[0]).sqrt() * eps
    ddim = DDIMSteps(SCH, steps=50)
    plms = PLMSSteps(SCH, steps=50)
    den = FixedX0(SCH, x0)
    out_d = ddim.sample(den, x_T.shape, x_T=x_T)
    den_p = FixedX0(SCH, x0)
    out_p = plms.sample(den_p, x_T.shape, x_T=x_T)
    assert torch.allclose(out_d, expect, atol=1e-10, rtol=0)
    assert torch.allclose(out_p, expect, atol=1e-10, rtol=0)
    assert ddim.nfe == 50 and plms.nfe == 51 and len(den_p.calls) == 51
    assert den_p.calls[:3] == [981, 961, 961]  # Heun-like first step evaluates at the next grid time


@pytest.mark.parametrize("name,steps,nfe", [("aias", 10, 10), ("ddim", 20, 20), ("plms", 20, 21), ("ddpm", None, 1000)])
def test_samplers_run_end_to_end_float32(name, steps, nfe):
    sampler = build_sampler(name, SCH, steps=steps)
    calls = []

    def den(x, t):
        calls.append(t)
        return smooth_stub(x, t)

    shape = (2, 4, 8, 8)
    z_bg = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    guide = MaskGuidance.official(half_mask(1, dtype=torch.float32), z_bg, farm=farm_stub)
    out = sampler.sample(den, shape, rng=BatchRNG([0, 1]), guidance=guide)
    assert out.shape == shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert sampler.nfe == nfe == len(calls)


def test_plms_rejects_eta():
    with pytest.raises(ValueError):
        PLMSSteps(SCH, eta=0.5)
    with pytest.raises(ValueError):
        build_sampler("plms", SCH, steps=10, eta=1.0)


def test_build_sampler_errors():
    assert build_sampler("aias", SCH, steps=10).segments == 8
    with pytest.raises(ValueError):
        build_sampler("euler", SCH)
    with pytest.raises(ValueError):
        build_sampler("ddpm", SCH, steps=50)


# --- guidance ----------------------------------------------------------------------------------
def test_paste_is_exact_outside_mask():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 16, 16, 3, generator=g) * 2 - 1
    decoded = torch.rand(2, 16, 16, 3, generator=g) * 2 - 1
    mask = (torch.rand(2, 16, 16, 1, generator=g) > 0.7).float()
    out = paste(decoded, image, mask)
    keep = mask.expand_as(image) == 0
    assert torch.equal(out[keep], image[keep])
    assert torch.equal(out[~keep], decoded[~keep])


def test_matched_paste_removes_the_decoded_mean_colour_offset_measured_outside_the_mask():
    """A decoded image = the normal image + a per-channel cast c + a defect d inside the mask: ``match``
    pastes exactly image + d inside (the cast measured outside and taken away), ``raw`` image + c + d."""
    g = torch.Generator().manual_seed(1)
    image = torch.rand(2, 3, 16, 16, generator=g) * 0.5 - 0.25
    cast = torch.tensor([0.02, 0.11, 0.10]).view(1, 3, 1, 1)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 7:9] = 1
    defect = -0.3 * mask
    decoded = image + cast + defect
    inside = mask.expand_as(image) == 1
    matched, raw = paste(decoded, image, mask, "match"), paste(decoded, image, mask, "raw")
    assert torch.equal(matched[~inside], image[~inside]) and torch.equal(raw[~inside], image[~inside])
    assert torch.allclose(matched[inside], (image + defect)[inside], atol=1e-6)
    assert torch.allclose(raw[inside], (image + cast + defect)[inside], atol=1e-6)
    assert torch.equal(paste(decoded, image, mask), raw)  # the function's default is the plain composite
    full = torch.ones(2, 1, 16, 16)  # nothing outside to measure on: no offset, no nan
    assert torch.equal(paste(decoded, image, full, "match"), decoded.clamp(-1, 1))
    with pytest.raises(ValueError, match="paste colour must be one of raw, match, got 'mean'"):
        paste(decoded, image, mask, "mean")


class RecordingGuidance(MaskGuidance):
    """Logs every timestep at which the background latent is forward-noised (= written back)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.log = []

    def _q(self, x0, t, rng, like):
        if x0 is self.z_bg:
            self.log.append(t)
        return super()._q(x0, t, rng, like)


def test_writeback_window_official_grid():
    shape = (1, 2, 4, 4)
    z_bg = torch.zeros(shape)
    guide = RecordingGuidance(half_mask(1, 4, 4, torch.float32), z_bg, writeback="window")
    sampler = AIASSampler(SCH)
    sampler.sample(smooth_stub, shape, rng=[0], guidance=guide)
    expect = [b for b in sampler.boundaries[1:] if 250 < b < 750]
    assert guide.log == expect and len(expect) == 24 and expect[0] == 749 and expect[-1] == 271


def test_writeback_every_and_ddpm_window():
    shape = (1, 2, 4, 4)
    mask = half_mask(1, 4, 4, torch.float32)
    every = RecordingGuidance(mask, torch.zeros(shape), writeback="every")
    aias = AIASSampler(SCH)
    aias.sample(smooth_stub, shape, rng=[0], guidance=every)
    assert every.log == aias.boundaries[1:]  # refinement steps never write back
    window = RecordingGuidance(mask, torch.zeros(shape), writeback="window")
    DDPMSampler(SCH).sample(smooth_stub, shape, rng=[0], guidance=window)
    assert window.log == list(range(749, 250, -1))
    off = RecordingGuidance(mask, None, writeback="off")
    aias.sample(smooth_stub, shape, rng=[0], guidance=off)
    assert off.log == []


def test_writeback_replaces_only_the_background():
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    z_bg = torch.full_like(x, 3.0)
    mask = half_mask(2)
    guide = MaskGuidance(mask, z_bg, writeback="every", schedule=SCH)
    out = guide.after_step(x, 10, as_batch_rng(BatchRNG([0, 1]), 2))
    inside = mask.expand_as(x) == 1
    assert torch.equal(out[inside], x[inside])
    assert (out[~inside] - math.sqrt(SCH.alpha_bar(10)) * 3.0).abs().max() < 1.0
    assert torch.equal(guide.after_step(x, -1, BatchRNG([0, 1])), x)


def test_farm_input_changes_only_the_masked_region():
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    mask = half_mask(1)
    guide = MaskGuidance(mask, farm=farm_stub, farm_mode="input", writeback="off").bind(SCH)
    x_in = guide.denoiser_input(x, 500, BatchRNG([0, 1]))
    inside = mask.expand_as(x) == 1
    assert torch.equal(x_in[~inside], x[~inside])
    assert not torch.allclose(x_in[inside], x[inside])
    # official mode: the state in the mean is the unmodified one; no FARM after the step
    assert torch.equal(guide.after_step(x, 400, BatchRNG([0, 1])), x)


def test_farm_state_mode_replaces_masked_state_after_step():
    x = torch.randn(2, 4, 8, 8, dtype=F64)
    mask = half_mask(1)
    guide = MaskGuidance(mask, farm=farm_stub, farm_mode="state", writeback="off").bind(SCH)
    rng = BatchRNG([0, 1])
    assert torch.equal(guide.denoiser_input(x, 500, rng), x)
    out = guide.after_step(x, 400, rng)
    inside = mask.expand_as(x) == 1
    assert torch.equal(out[~inside], x[~inside]) and not torch.allclose(out[inside], x[inside])
    paper = MaskGuidance.paper(mask, torch.zeros_like(x), farm=farm_stub)
    res = AIASSampler(SCH, segments=8).sample(smooth_stub, x.shape, rng=[0, 1], guidance=paper, dtype=F64)
    assert torch.isfinite(res).all()


def test_ndi_start_from_noised_background():
    shape = (2, 2, 4, 4)
    z_bg = torch.randn(shape, dtype=F64)
    guide = MaskGuidance(half_mask(2, 4, 4), z_bg, writeback="every").bind(SCH)
    x_T = guide.prepare_x_T(shape, BatchRNG([3, 4]), t_start=300)
    noise = BatchRNG([3, 4]).randn(shape[1:], dtype=F64)
    ab = SCH.alpha_bar(300)
    assert torch.allclose(x_T, math.sqrt(ab) * z_bg + math.sqrt(1 - ab) * noise, atol=1e-12)
    sampler = AIASSampler(SCH, segments=10, t_start=300)
    calls = []
    den = lambda x, t: (calls.append(int(t[0])), smooth_stub(x, t))[1]  # noqa: E731
    sampler.sample(den, shape, rng=[3, 4], guidance=guide, dtype=F64)
    assert calls[0] == 300 and sampler.nfe == 12
    with pytest.raises(ValueError):
        sampler.sample(smooth_stub, shape, rng=[3, 4])


# --- RNG ---------------------------------------------------------------------------------------
def test_batch_rng_is_per_sample():
    seeds = [11, 22, 33]
    batch = BatchRNG(seeds)
    singles = [BatchRNG([s]) for s in seeds]
    for _ in range(3):  # streams stay aligned across successive draws
        b = batch.randn((2, 3), dtype=F64)
        s = torch.cat([r.randn((2, 3), dtype=F64) for r in singles])
        assert torch.equal(b, s)
    assert torch.equal(BatchRNG([5]).randn((4,), dtype=torch.float16).float(),
                       BatchRNG([5]).randn((4,)).half().float())
    with pytest.raises(ValueError):
        as_batch_rng(batch, 2)
    assert len(as_batch_rng(None, 4).randn((2,))) == 4


@pytest.mark.parametrize("name", ["aias", "ddim"])
def test_outputs_do_not_depend_on_batch_size(name):
    seeds = [101, 202, 303]
    shape = (3, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    z_bg = torch.randn(shape, generator=g)
    mask = (torch.rand(3, 1, 8, 8, generator=g) > 0.5).float()
    kw = {"eta": 1.0} if name == "ddim" else {}
    sampler = build_sampler(name, SCH, steps=20, **kw)
    full = sampler.sample(smooth_stub, shape, rng=BatchRNG(seeds),
                          guidance=MaskGuidance.official(mask, z_bg, farm=farm_stub))
    for i, s in enumerate(seeds):
        one = sampler.sample(smooth_stub, (1, *shape[1:]), rng=BatchRNG([s]),
                             guidance=MaskGuidance.official(mask[i:i + 1], z_bg[i:i + 1], farm=farm_stub))
        assert torch.equal(one[0], full[i])


# --- CompVis adapters --------------------------------------------------------------------------
class StubModel:
    def __init__(self):
        self.schedule = SCH
        self.seen = []

    def apply_model(self, x, t, cond):
        self.seen.append(x.shape[0])
        return torch.tanh(x) * 0.5 + cond.view(-1, 1, 1, 1).to(x)


def test_compvis_ddim_adapter_matches_core_and_returns_intermediates():
    model = StubModel()
    cond = torch.tensor([0.1, -0.2])
    sampler = CompVisDDIM(model)
    samples, inter = sampler.sample(S=20, batch_size=2, shape=(4, 8, 8), conditioning=cond, eta=0.5,
                                    verbose=False, rng=BatchRNG([1, 2]), log_every_t=5)
    assert samples.shape == (2, 4, 8, 8)
    assert set(inter) == {"x_inter", "pred_x0"} and len(inter["x_inter"]) == len(inter["pred_x0"]) == 6
    assert sampler.ddim_timesteps.tolist() == list(range(1, 1000, 50))
    core = DDIMSteps(SCH, steps=20, eta=0.5)
    ref = core.sample(lambda x, t: model.apply_model(x, t, cond), (2, 4, 8, 8), rng=BatchRNG([1, 2]))
    assert torch.allclose(samples, ref, atol=1e-6)


def test_compvis_cfg_and_plms():
    model = StubModel()
    cond, uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 0.5])
    den = make_denoiser(model, cond, 3.0, uncond)
    x = torch.randn(2, 4, 8, 8)
    t = torch.full((2,), 10, dtype=torch.long)
    guided = den(x, t)
    assert model.seen == [4]  # one batched forward pass for uncond + cond
    e_u, e_c = model.apply_model(x, t, uncond), model.apply_model(x, t, cond)
    assert torch.allclose(guided, e_u + 3.0 * (e_c - e_u), atol=1e-6)
    plms = CompVisPLMS(model)
    samples, inter = plms.sample(S=10, batch_size=2, shape=(4, 8, 8), conditioning=cond, verbose=False,
                                 unconditional_guidance_scale=2.0, unconditional_conditioning=uncond)
    assert samples.shape == (2, 4, 8, 8) and isinstance(inter, dict)
    with pytest.raises(ValueError):
        plms.make_schedule(10, ddim_eta=0.3, verbose=False)
    with pytest.raises(ValueError):
        plms.sample(S=10, batch_size=2, shape=(4, 8, 8), conditioning=cond, eta=0.3, verbose=False)


def test_compvis_mask_keeps_x0_where_one():
    # LDM convention: mask = 1 keeps x0. With eps = 0 the kept half ends at ~x0, the other half does not
    class ZeroEps(StubModel):
        def apply_model(self, x, t, cond):
            return torch.zeros_like(x)

    x0 = torch.full((1, 4, 8, 8), 2.0)
    keep = 1.0 - half_mask(1, dtype=torch.float32)
    samples, _ = CompVisDDIM(ZeroEps()).sample(S=20, batch_size=1, shape=(4, 8, 8), mask=keep, x0=x0,
                                               verbose=False, rng=[0])
    kept = keep.expand_as(x0) == 1
    assert (samples[kept] - 2.0).abs().max() < 0.3
    assert (samples[~kept] - 2.0).abs().mean() > 1.0


def test_classifier_free_is_the_guidance_closed_form_and_one_is_the_prompt_alone():
    from ldm.models.diffusion.samplers.guidance import classifier_free

    calls = []

    def eps_c(x, t):
        calls.append("c")
        return 2.0 * x + t

    def eps_u(x, t):
        calls.append("u")
        return x - 1.0

    x, t = torch.randn(2, 4, 8, 8), torch.full((2, 1, 1, 1), 3.0)
    assert classifier_free(eps_c, eps_u, 1.0) is eps_c  # no second network call at s = 1
    out = classifier_free(eps_c, eps_u, 2.5)(x, t)
    assert torch.allclose(out, (x - 1.0) + 2.5 * ((2.0 * x + t) - (x - 1.0)))
    assert sorted(calls) == ["c", "u"]
    assert torch.equal(classifier_free(eps_c, eps_u, 0.0)(x, t), x - 1.0)
