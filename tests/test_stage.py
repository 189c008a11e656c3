"""STAGE: explicit mask alignment, branch windows, the two-branch loop against a hand-written reference,
the training step and its loss (official L1 default, L2 option), accelerated NFE, the official output
(no paste) and the paste option, artifacts and main.py."""
import math

import pytest
import torch
import torch.nn.functional as F

import main as main_mod
from ldm.data.texture_ad import build_texture_ad
from ldm.models.diffusion.adaptor import MGA
from ldm.models.diffusion.sampler_registry import build_sampler
from ldm.models.diffusion.samplers import MaskGuidance
from ldm.models.diffusion.samplers.guidance import paste
from ldm.models.diffusion.samplers.rng import BatchRNG
from ldm.models.diffusion.samplers.stage import STAGESampler, explicit_mask, stage_boundaries
from ldm.models.diffusion.schedule import NoiseSchedule
from ldm.models.diffusion.stage import available_artifact_steps
from ldm.util import instantiate_from_config
from tests.run_fixture import backbone_ckpt_from_config
from tests.tiny_configs import stage_config as tiny_stage_config

SCH = NoiseSchedule.from_config("linear", 1000, 0.00085, 0.012)
NAME = "tex+scratch"


def stage_config(**overrides) -> dict:
    return tiny_stage_config(names=[NAME], **overrides)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    m = instantiate_from_config(stage_config())
    with torch.no_grad():  # a "pretrained" UNet: no zero-initialised output convs
        for p in m.model.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    m.learning_rate = 2e-3
    return m


def _square_mask(b=2, size=8, lo=2, hi=6):
    m = torch.zeros(b, 1, size, size)
    m[:, :, lo:hi, lo:hi] = 1
    return m


def _batch(n=2, size=32):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, size, size)
    mask[:, 8:24, 8:20] = 1
    return {"image": torch.rand(n, size, size, 3, generator=g) * 2 - 1, "mask": mask,
            "caption": ["Anomaly *"] * n, "name": [NAME] * n}


# ----------------------------------------------------------------------------- explicit mask alignment
@pytest.mark.parametrize("t, alpha", [(999, 799 / 800), (600, 0.5), (200, 0.0), (0, 0.0)])
def test_explicit_mask_values(t, alpha):
    m = _square_mask()
    mt = explicit_mask(m, t)
    assert torch.all(mt[m == 1] == 1)
    assert torch.allclose(mt[m == 0], torch.full_like(mt[m == 0], alpha))
    # per-sample training timesteps give the same values
    mt_vec = explicit_mask(m, torch.tensor([t, t]))
    assert torch.allclose(mt_vec, mt)


def test_explicit_mask_cosine_variant_is_binary():
    m = _square_mask()
    assert torch.equal(explicit_mask(m, 999, kind="cosine"), torch.ones_like(m))
    assert torch.equal(explicit_mask(m, 600, kind="cosine"), m)  # α = 0.5 is not > 0.5
    assert torch.equal(explicit_mask(m, 800, kind="cosine"), torch.ones_like(m))  # α = 0.905
    assert torch.equal(explicit_mask(m, 0, kind="cosine"), m)
    with pytest.raises(ValueError, match="mask_schedule"):
        explicit_mask(m, 5, kind="sigmoid")


def test_sampler_uses_the_mask_of_the_previous_step():
    s = build_sampler("stage", SCH)
    m = _square_mask()
    assert torch.equal(s.mask_at(m, 999), torch.ones_like(m))  # all ones at the first step
    assert torch.allclose(s.mask_at(m, 599), explicit_mask(m, 600))
    assert torch.equal(s.mask_at(m, 199), m) and torch.equal(s.mask_at(m, 0), m)


# ----------------------------------------------------------------------------- branch windows and grids
def test_branch_at_each_step_around_the_windows():
    s = build_sampler("stage", SCH)
    assert isinstance(s, STAGESampler) and s.official and s.nfe == 1000
    branch = {st.t_s: st.branch for st in s.steps}
    expected = {999: "aware", 801: "aware", 800: "only", 750: "only", 700: "only", 699: "aware",
                401: "aware", 400: "only", 300: "only", 299: "aware", 0: "aware"}
    assert {t: branch[t] for t in expected} == expected
    assert sum(b == "only" for b in branch.values()) == 202
    assert [st.t_s for st in s.steps] == list(range(999, -1, -1))
    assert [st.t_e for st in s.steps] == list(range(998, -2, -1))


@pytest.mark.parametrize("steps, only, per_interval", [(50, 10, [10, 5, 15, 5, 15]), (10, 2, [2, 1, 3, 1, 3])])
def test_aligned_grid_puts_window_edges_on_segment_boundaries(steps, only, per_interval):
    b = stage_boundaries(1000, steps)
    assert len(b) == steps + 1 and b[0] == 999 and b[-1] == -1
    assert all(x > y for x, y in zip(b, b[1:]))
    for edge in (800, 699, 400, 299):
        assert edge in b
    cuts = [b.index(e) for e in (999, 800, 699, 400, 299, -1)]
    assert [j - i for i, j in zip(cuts, cuts[1:])] == per_interval
    s = build_sampler("stage", SCH, steps=steps)
    assert sum(st.branch == "only" for st in s.steps) == only
    for st in s.steps:  # a segment is anomaly-only iff it starts inside a window
        assert (st.branch == "only") == (700 <= st.t_s <= 800 or 300 <= st.t_s <= 400)
    with pytest.raises(ValueError, match="needs steps >= 5"):
        stage_boundaries(1000, 4)
    u = build_sampler("stage", SCH, steps=steps, grid="uniform")
    assert u.boundaries == torch.linspace(999, -1, steps + 1, dtype=torch.float64).floor().long().tolist()


# ----------------------------------------------------------------------------- the loop vs a reference
class StubDenoiser:
    """Deterministic ε that depends on x (also through its spatial mean, so the background reaches the
    masked region), t, the branch and the adapter mask; logs every call and its input."""

    def __init__(self):
        self.calls = []
        self.inputs = []

    def __call__(self, x, t, branch, mask):
        self.calls.append((int(t[0]), branch, mask.clone()))
        self.inputs.append(x.clone())
        shift = 0.3 if branch == "only" else -0.2
        t = t.to(x.dtype).view(-1, 1, 1, 1)
        return 0.5 * x + 0.2 * x.mean(dim=(1, 2, 3), keepdim=True) + shift * mask + 1e-3 * t


def reference_loop(eps_fn, x_T, mask, clean, rng, transitions):
    """The official ``p_sample_loop`` written out, on the given (t_s, t_e, Π, Σ, std) transitions.

    Per step it draws q(clean, t_prev) noise, then q(0, t_prev) noise, then the step's noise, with
    t_prev = max(t_e, 0). The official loop sets ``current_mask = EMA(step=i)`` after step i, for the
    step that starts at i - 1 = t_e; on any grid that is the mask at t_e + 1.
    """
    ab = SCH.alphas_cumprod.tolist()

    def q(x0, t):
        a = math.sqrt(ab[t])
        return a * x0 + math.sqrt(1 - a * a) * rng.randn(x0.shape[1:], dtype=x0.dtype)

    img, mask_image = x_T.clone(), x_T.clone()
    current_mask = torch.ones_like(mask)
    for t_s, t_e, pi, sigma, std in transitions:
        t_prev = max(t_e, 0)
        img_orig = q(clean, t_prev)
        mask_orig = q(torch.zeros_like(clean), t_prev)
        tvec = torch.full((x_T.shape[0],), t_s)
        if 700 <= t_s <= 800 or 300 <= t_s <= 400:
            eps = eps_fn(mask_image, tvec, "only", mask)
            x0 = (mask_image - math.sqrt(1 - ab[t_s]) * eps) / math.sqrt(ab[t_s])
            x0 = mask * x0 + mask * (1 - mask)  # AIF with the mask itself as background (zeros)
            mask_image = pi * mask_image + sigma * x0
            if std > 0:
                mask_image = mask_image + std * rng.randn(x_T.shape[1:], dtype=x_T.dtype)
            img = mask * mask_image + img_orig * (1 - mask)
            mask_image = mask * mask_image + mask_orig * (1 - mask)
        else:
            eps = eps_fn(img, tvec, "aware", current_mask)
            x0 = (img - math.sqrt(1 - ab[t_s]) * eps) / math.sqrt(ab[t_s])
            x0 = current_mask * x0 + clean * (1 - current_mask)
            img = pi * img + sigma * x0
            if std > 0:
                img = img + std * rng.randn(x_T.shape[1:], dtype=x_T.dtype)
            mask_image = mask * img + mask_orig * (1 - mask)
            img = current_mask * img + img_orig * (1 - current_mask)
        alpha = min(max((t_e + 1 - 200) / 800, 0.0), 1.0)
        current_mask = alpha * (1 - mask) + mask
    return img


def _ddpm_transitions():
    b = SCH.buffers()
    c1, c2, var = b["posterior_mean_coef1"].tolist(), b["posterior_mean_coef2"].tolist(), b["posterior_variance"]
    return [(t, t - 1, c2[t], c1[t], math.sqrt(var[t]) if t > 0 else 0.0) for t in range(999, -1, -1)]


def _coarse_transitions(boundaries):
    out = []
    for t_s, t_e in zip(boundaries, boundaries[1:]):
        ab_s, ab_e = SCH.alpha_bar(t_s), SCH.alpha_bar(t_e)
        pi = math.sqrt(ab_s / ab_e) * (1 - ab_e) / (1 - ab_s)
        sigma = math.sqrt(ab_e) * (1 - ab_s / ab_e) / (1 - ab_s)
        out.append((t_s, t_e, pi, sigma, math.sqrt((1 - ab_e) * (1 - ab_s / ab_e) / (1 - ab_s))))
    return out


@pytest.mark.parametrize("steps", [None, 10])
def test_two_branch_loop_matches_the_official_loop(steps):
    torch.manual_seed(3)
    b, shape = 2, (2, 4, 8, 8)
    mask = _square_mask(b).double()
    clean = torch.randn(shape, dtype=torch.float64)
    sampler = build_sampler("stage", SCH, steps=steps)
    stub = StubDenoiser()
    out = sampler.sample(stub, shape, rng=BatchRNG([5, 6]), guidance=MaskGuidance(mask, clean, writeback="off"),
                         dtype=torch.float64)
    ref_stub = StubDenoiser()
    rng = BatchRNG([5, 6])
    x_T = rng.randn(shape[1:], dtype=torch.float64)
    transitions = _ddpm_transitions() if steps is None else _coarse_transitions(sampler.boundaries)
    ref = reference_loop(ref_stub, x_T, mask, clean, rng, transitions)
    assert torch.allclose(out, ref, atol=1e-9, rtol=0)
    assert len(stub.calls) == len(ref_stub.calls) == sampler.nfe
    for (t, br, m), (t_r, br_r, m_r) in zip(stub.calls, ref_stub.calls):
        assert (t, br) == (t_r, br_r) and torch.allclose(m, m_r, atol=1e-12)
    for x_in, x_ref in zip(stub.inputs, ref_stub.inputs):  # the state each branch's network saw
        assert torch.allclose(x_in, x_ref, atol=1e-9, rtol=0)
    assert {br for _, br, _ in stub.calls} == {"aware", "only"}


def test_clean_final_writes_the_clean_background():
    shape = (1, 4, 8, 8)
    mask = _square_mask(1)
    clean = torch.randn(shape)
    s = build_sampler("stage", SCH, steps=10, clean_final=True)
    out = s.sample(StubDenoiser(), shape, rng=BatchRNG([1]), guidance=MaskGuidance(mask, clean, writeback="off"))
    assert torch.equal(out * (1 - mask), clean * (1 - mask))


@pytest.mark.parametrize("steps, nfe, only", [(50, 50, 10), (10, 10, 2)])
def test_accelerated_stage_calls_the_denoiser_steps_times(steps, nfe, only):
    shape = (1, 4, 8, 8)
    stub = StubDenoiser()
    s = build_sampler("stage", SCH, steps=steps)
    s.sample(stub, shape, rng=BatchRNG([0]), guidance=MaskGuidance(_square_mask(1), torch.zeros(shape),
                                                                     writeback="off"))
    assert s.nfe == len(stub.calls) == nfe
    assert sum(br == "only" for _, br, _ in stub.calls) == only
    assert [t for t, _, _ in stub.calls] == s.boundaries[:-1]
    with pytest.raises(ValueError, match="z_bg"):
        s.sample(stub, shape, rng=BatchRNG([0]))


def test_t_start_starts_both_states_from_the_noised_normal_latent():
    shape = (1, 4, 8, 8)
    mask, clean = _square_mask(1), torch.randn(shape)
    s = build_sampler("stage", SCH, steps=10, t_start=750)
    assert s.boundaries[0] == 750 and {699, 400, 299} <= set(s.boundaries)
    stub = StubDenoiser()
    guidance = MaskGuidance(mask, clean, writeback="off")
    s.sample(stub, shape, rng=BatchRNG([2]), guidance=guidance)
    x_T = guidance.bind(SCH).prepare_x_T(shape, BatchRNG([2]), t_start=750)
    assert stub.calls[0][:2] == (750, "only")  # the anomaly-only state is x_T itself
    assert torch.equal(stub.inputs[0], x_T)


# ----------------------------------------------------------------------------- the model
def test_mga_has_the_official_shape():
    mga = MGA(4)
    assert sum(p.numel() for p in mga.parameters()) == pytest.approx(2.66e6, abs=0.01e6)
    assert all(k.startswith("conv.") for k in mga.state_dict())
    assert mga(torch.randn(2, 4, 8, 8), torch.rand(2, 1, 8, 8)).shape == (2, 4, 8, 8)


def test_training_step_updates_only_embeddings_and_both_adapters(model):
    m = model
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {"fine_image", "fine_mask", "embedding_manager"}
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = m.configure_optimizers()
    m.train()
    loss, logs = m.shared_step(_batch())
    assert {"train/loss", "train/loss_simple", "train/loss_mask"} <= set(logs)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = m.state_dict()
    for k, v in after.items():
        if not k.startswith(("fine_image.", "fine_mask.", "embedding_manager.")):
            assert torch.equal(before[k], v), f"frozen tensor changed: {k}"
    for prefix in ("fine_image.", "fine_mask.", "embedding_manager."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix


def _hand_loss_pieces(m, x0, mask, t, eps, eps_m, c):
    """(M_t, ε̂_img, ε̂_mask) written out from the official ``p_losses``."""
    ab = m.alphas_cumprod[t].view(-1, 1, 1, 1)
    alpha = ((t.float() - 200) / 800).clamp(0, 1).view(-1, 1, 1, 1)
    m_t = alpha * (1 - mask) + mask
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    mask_t = ab.sqrt() * (mask * x0) + (1 - ab).sqrt() * eps_m
    eps_img = m.fine_image(m.model(x_t, t, c_crossattn=[c]), m_t)
    eps_mask = m.fine_mask(m.model(mask_t, t, c_crossattn=[c]), mask)
    return m_t, eps_img, eps_mask


def _fixed_loss_inputs(m):
    torch.manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8)
    t = torch.tensor([650, 120])
    eps, eps_m = torch.randn_like(x0), torch.randn_like(x0)
    c = m.get_learned_conditioning({"caption": ["Anomaly *"] * 2, "name": [NAME] * 2})
    return x0, _square_mask(2), t, eps, eps_m, c


def test_defaults_are_the_official_l1_loss_with_weight_4_and_no_paste(model):
    assert model.loss_type == "l1" and model.l_simple_weight == 4.0 and model.mask_loss_weight == 1.0
    assert model.paste is False


def test_loss_matches_a_hand_computation(model):
    """Official default: 4·mean|M_t ⊙ (ε − ε̂_img)| + 1·mean|ε' − ε̂_mask| (loss_type l1)."""
    m = model.eval()
    x0, mask, t, eps, eps_m, c = _fixed_loss_inputs(m)
    with torch.no_grad():
        loss, logs = m.p_losses(x0, c, t, noise=eps, mask=mask, noise_mask=eps_m)
        m_t, eps_img, eps_mask = _hand_loss_pieces(m, x0, mask, t, eps, eps_m, c)
        by_hand = 4.0 * (m_t * (eps - eps_img)).abs().mean() + 1.0 * (eps_m - eps_mask).abs().mean()
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(logs["val/loss_simple"]) == pytest.approx(float((m_t * (eps - eps_img)).abs().mean()), rel=1e-5)
    assert float(logs["val/loss_mask"]) == pytest.approx(float(F.l1_loss(eps_mask, eps_m)), rel=1e-5)


def test_loss_type_l2_gives_the_former_squared_loss():
    torch.manual_seed(0)
    m = instantiate_from_config(stage_config(loss_type="l2")).eval()
    assert m.loss_type == "l2"
    x0, mask, t, eps, eps_m, c = _fixed_loss_inputs(m)
    with torch.no_grad():
        loss, logs = m.p_losses(x0, c, t, noise=eps, mask=mask, noise_mask=eps_m)
        m_t, eps_img, eps_mask = _hand_loss_pieces(m, x0, mask, t, eps, eps_m, c)
        by_hand = 4.0 * ((m_t * (eps - eps_img)) ** 2).mean() + 1.0 * ((eps_m - eps_mask) ** 2).mean()
    assert float(loss) == pytest.approx(float(by_hand), rel=1e-5)
    assert float(logs["val/loss_mask"]) == pytest.approx(float(F.mse_loss(eps_mask, eps_m)), rel=1e-5)


def _generation_inputs():
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    masks = torch.zeros(2, 1, 32, 32)
    masks[:, :, 8:24, 8:20] = 1
    return images, masks


def _gen(m, images, masks, sampler=None, **kw):
    sampler = m.make_sampler("stage", 10) if sampler is None else sampler
    return m.generate(images, masks, ["Anomaly *"] * 2, [NAME] * 2, sampler, BatchRNG([0, 1]), **kw)


def test_official_generation_returns_the_decoded_image_and_runs_steps_unet_calls(model):
    m = model.eval()
    images, masks = _generation_inputs()
    calls = []
    hook = m.model.diffusion_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        out = _gen(m, images, masks)
    finally:
        hook.remove()
    assert len(calls) == 10
    assert out.shape == images.shape
    # no paste: the background is the decoder's, not the normal image's pixels (and it is measurable)
    outside = masks.expand_as(out) == 0
    assert not torch.equal(out[outside], images[outside])
    assert float((out[outside] - images[outside]).abs().mean()) > 0
    # ... and it is exactly what the decoder gave: the same run with the paste off explicitly
    assert torch.equal(_gen(m, images, masks, guidance_kw={"paste": False}), out)
    assert m.make_sampler("ddpm").official and m.make_sampler("stage", 50).nfe == 50
    logs = m.log_images(_batch(), N=2, ddim_steps=3)  # the image logger's few steps still fit the windows
    assert logs["samples"].shape == logs["inputs"].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="t_start"):
        _gen(m, images, masks, t_start=500)
    with pytest.raises(ValueError, match="sampler must be one of"):
        m.make_sampler("aias", 10)
    # the generation library passes FAST's guidance options to every model: accepted, no effect on STAGE
    assert torch.equal(_gen(m, images, masks, guidance_kw={"farm_mode": "input", "writeback": "window"}), out)
    with pytest.raises(ValueError, match="unknown guidance_kw"):
        _gen(m, images, masks, guidance_kw={"pasted": False})


def test_the_paste_option_restores_the_exact_background(model):
    m = model.eval()
    images, masks = _generation_inputs()
    outside = masks.expand_as(images) == 0
    raw = _gen(m, images, masks)
    # three ways to ask for it: guidance_kw, the sampler option (what GenerationOptions.extra reaches),
    # and the model config (paste: true, the former default)
    by_kw = _gen(m, images, masks, guidance_kw={"paste": True})
    by_sampler = _gen(m, images, masks, sampler=m.make_sampler("stage", 10, paste=True))
    pasting = instantiate_from_config(stage_config(paste=True)).eval()
    pasting.load_state_dict(m.state_dict())
    by_config = _gen(pasting, images, masks)
    for out in (by_kw, by_sampler, by_config):
        assert torch.equal(out[outside], images[outside])  # bit-identical outside the mask
        assert torch.equal(out * masks, raw * masks)         # same run, only the paste differs
    matched = _gen(m, images, masks, guidance_kw={"paste": True}, paste_colour="match")
    assert torch.equal(matched, paste(raw, images, masks, "match"))
    assert not torch.equal(matched * masks, raw * masks)
    # the explicit choice wins over the model's: the sampler's, then guidance_kw
    assert torch.equal(_gen(pasting, images, masks, sampler=pasting.make_sampler("stage", 10, paste="off")), raw)
    assert torch.equal(_gen(m, images, masks, sampler=m.make_sampler("stage", 10, paste=True),
                            guidance_kw={"paste": False}), raw)
    assert "paste=True" in repr(m.make_sampler("stage", 10, paste="true"))
    with pytest.raises(ValueError, match="paste must be true or false"):
        m.make_sampler("stage", 10, paste="sometimes")


def test_artifacts_use_official_names_and_reload(model, tmp_path):
    m = model
    opt = m.configure_optimizers()
    m.train()
    m.shared_step(_batch())[0].backward()
    opt.step()
    m.eval()
    paths = m.export_artifacts(tmp_path, 3)
    assert sorted(p.name for p in paths) == sorted(f"{s}.{e}" for s in ("embeddings", "embeddings_gs-3",
                                                                          "fine_image-3", "fine_mask-3")
                                                   for e in ("pt", "safetensors"))
    for p in paths:
        if p.suffix == ".pt":
            torch.load(p, weights_only=True)
    assert available_artifact_steps(tmp_path) == [3]
    backbone = {k: v for k, v in m.state_dict().items() if not k.startswith(("fine_", "embedding_manager."))}
    torch.save({"state_dict": backbone}, tmp_path / "backbone.ckpt")
    fresh = instantiate_from_config(stage_config(ckpt_path=str(tmp_path / "backbone.ckpt"))).eval()
    with pytest.raises(ValueError, match=r"available: \[3\]"):
        fresh.load_artifacts(tmp_path, 4)
    torch.save(m.fine_mask, tmp_path / "fine_mask-3.pt")  # the official files pickle whole modules
    fresh.load_artifacts(tmp_path, 3)
    x, t, mask = torch.randn(2, 4, 8, 8), torch.tensor([5, 750]), _square_mask(2)
    c = {"caption": ["Anomaly *"] * 2, "name": [NAME] * 2}
    with torch.no_grad():
        for branch in ("aware", "only"):
            a = m.apply_model(x, t, m.get_learned_conditioning(c), mask=mask, branch=branch)
            b = fresh.apply_model(x, t, fresh.get_learned_conditioning(c), mask=mask, branch=branch)
            assert torch.equal(a, b), branch


# ----------------------------------------------------------------------------- main.py with the shipped config
def test_main_trains_the_texture_demo_config(tmp_path):
    data = tmp_path / "texture-ad"
    build_texture_ad(data, size=64, train_good=2, test_good=1, per_defect=6, textures=["brick"], defects=["scratch"])
    ckpt = backbone_ckpt_from_config("configs/stage/texture-demo.yaml", tmp_path / "ldm.ckpt")
    trainer, stage = main_mod.run(["--base", "configs/stage/texture-demo.yaml", "-t", "--actual_resume",
                                   str(tmp_path / "ldm.ckpt"), "--mvtec_path",
                                   str(data / "brick" / "ground_truth" / "scratch") + "/", "--init_word", "scratch",
                                   "--max_steps", "2", "-l", str(tmp_path / "logs"), "-lf", "stage",
                                   "data.params.batch_size=2"])
    assert trainer.global_step == 2 and type(stage).__name__ == "STAGE"
    ckdir = tmp_path / "logs" / "stage" / "checkpoints"
    for name in ("embeddings_gs-2.pt", "fine_image-2.pt", "fine_mask-2.pt", "last.ckpt"):
        assert (ckdir / name).is_file(), name
    sd = stage.state_dict()
    for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items():
        if k.startswith("model.diffusion_model."):
            assert torch.equal(sd[k].cpu(), v), k
