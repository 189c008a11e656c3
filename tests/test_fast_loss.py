"""FAST.p_losses against the paper's loss computed by hand on a fixed batch (tiny model, CPU).

    x_t   = q(x0, t, ε) = sqrt(ᾱ_t)·x0 + sqrt(1 − ᾱ_t)·ε
    x̂0_an = FARM(x_t, M, t)
    x̂_t   = (1 − M)·x_t + M·q(x̂0_an, t, ε)               (the same ε)
    ε̂     = adaptor(concat(UNet(x̂_t, t, c), M))
    loss  = 2·mean((ε − ε̂)²) + 5·mean((x̂0_an − M⊙x0)²)
"""
import pytest
import torch

from ldm.models.diffusion.latent_mask import latent_mask
from ldm.util import instantiate_from_config
from tests.tiny_configs import fast_config

B, C, H = 3, 4, 8
COND = {"caption": ["Anomaly *"] * B, "name": ["tex+scratch"] * B}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = instantiate_from_config(fast_config())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # off zero: every part of the loss must carry signal
        for p in m.model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
        for p in m.FARM.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    m.train()
    return m


def _inputs():
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(B, C, H, H, generator=g)
    noise = torch.randn(B, C, H, H, generator=g)
    t = torch.tensor([5, 480, 990])
    mask = torch.zeros(B, 1, H, H)
    mask[0, :, 2:6, 1:4] = 1
    mask[1, :, 0:3, :] = 1
    mask[2, :, 4:8, 5:8] = 1
    return x0, noise, t, mask


def _q(ab, x, t, noise):
    a = ab[t].view(-1, 1, 1, 1)
    return (a.sqrt() * x.double() + (1 - a).sqrt() * noise.double()).float()


def _hand(m, x0, noise, t, mask, c, *, farm_target_masked=True, write_back=True):
    ab = m.schedule.alphas_cumprod  # float64, the buffers' source
    x_t = _q(ab, x0, t, noise)
    x0_an = m.FARM(x_t, mask, t)
    x_hat = (1 - mask) * x_t + mask * _q(ab, x0_an, t, noise) if write_back else x_t
    eps_unet = m.model.diffusion_model(x_hat, t, context=c)
    eps_hat = m.fine.net(torch.cat([eps_unet, mask.expand(-1, C, -1, -1)], dim=1))  # "replace" adaptor
    target = mask * x0 if farm_target_masked else x0
    noise_term = ((noise - eps_hat) ** 2).mean()
    farm_term = ((x0_an - target) ** 2).mean()
    return 2.0 * noise_term + 5.0 * farm_term, noise_term, farm_term


def test_weights_are_the_papers():
    m = instantiate_from_config(fast_config())
    assert m.l_simple_weight == 2.0 and m.farm_loss_weight == 5.0 and m.original_elbo_weight == 0.0
    assert m.adaptor_mode == "replace" and not m.learn_logvar and m.embedding_reg_weight == 0


def test_p_losses_equals_the_hand_computation(model):
    m = model
    x0, noise, t, mask = _inputs()
    with torch.no_grad():
        c = m.get_learned_conditioning(COND)
        expect, noise_term, farm_term = _hand(m, x0, noise, t, mask, c)
        loss, d = m.p_losses(x0, c, t, noise=noise, mask=mask)
    assert noise_term > 1e-3 and farm_term > 1e-3  # both terms present
    torch.testing.assert_close(loss, expect, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d["train/loss_noise"], 2.0 * noise_term, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d["train/loss_farm"], farm_term, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d["train/loss"], expect, rtol=1e-5, atol=1e-6)
    # the hand computation is sensitive to the mistakes it guards against
    for variant in ({"farm_target_masked": False}, {"write_back": False}):
        with torch.no_grad():
            other, _, _ = _hand(m, x0, noise, t, mask, c, **variant)
        assert abs(float(other) - float(expect)) > 1e-3 * float(expect), variant


def test_the_same_noise_is_used_for_x_t_and_the_farm_renoising(model):
    """Re-noising FARM's output with a fresh ε (instead of the training ε) changes the loss."""
    m = model
    x0, noise, t, mask = _inputs()
    with torch.no_grad():
        c = m.get_learned_conditioning(COND)
        loss, _ = m.p_losses(x0, c, t, noise=noise, mask=mask)
        ab = m.schedule.alphas_cumprod
        x_t = _q(ab, x0, t, noise)
        x0_an = m.FARM(x_t, mask, t)
        fresh = torch.randn(noise.shape, generator=torch.Generator().manual_seed(99))
        x_hat = (1 - mask) * x_t + mask * _q(ab, x0_an, t, fresh)
        eps_hat = m.fine.net(torch.cat([m.model.diffusion_model(x_hat, t, context=c), mask.expand(-1, C, -1, -1)], 1))
        other = 2.0 * ((noise - eps_hat) ** 2).mean() + 5.0 * ((x0_an - mask * x0) ** 2).mean()
    assert abs(float(other) - float(loss)) > 1e-3 * float(loss)


def test_gradients_of_p_losses_equal_the_hand_computation(model):
    m = model
    x0, noise, t, mask = _inputs()
    params = [p for p in m.parameters() if p.requires_grad]
    c = m.get_learned_conditioning(COND)
    loss, _ = m.p_losses(x0, c, t, noise=noise, mask=mask)
    got = torch.autograd.grad(loss, params, allow_unused=True)
    c = m.get_learned_conditioning(COND)
    expect, _, _ = _hand(m, x0, noise, t, mask, c)
    want = torch.autograd.grad(expect, params, allow_unused=True)
    n_nonzero = 0
    for p, a, b in zip(params, got, want):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
            n_nonzero += int(a.abs().sum() > 0)
    assert n_nonzero > 0


def test_shared_step_passes_the_latent_mask_of_the_batch(model, monkeypatch):
    """shared_step hands p_losses the pixel mask resized to the latent grid (here exactly 4×4 blocks)."""
    m = model
    size = 32
    pix = torch.zeros(2, size, size)
    pix[0, 8:24, 4:16] = 1  # latent rows 2..5, cols 1..3
    pix[1, 0:4, 28:32] = 1  # latent cell (0, 7)
    batch = {"image": torch.rand(2, size, size, 3) * 2 - 1, "mask": pix, "caption": ["Anomaly *"] * 2,
             "name": ["tex+scratch"] * 2}
    seen = {}
    original = m.p_losses

    def spy(x_start, cond, t, noise=None, mask=None):
        seen.update(x_start=x_start, t=t, mask=mask)
        return original(x_start, cond, t, noise=noise, mask=mask)

    monkeypatch.setattr(m, "p_losses", spy)
    with torch.no_grad():
        m.shared_step(batch)
    expect = torch.zeros(2, 1, H, H)
    expect[0, :, 2:6, 1:4] = 1
    expect[1, :, 0, 7] = 1
    assert torch.equal(seen["mask"], expect)
    assert torch.equal(latent_mask(pix, (H, H)), expect)
    assert seen["x_start"].shape == (2, C, H, H) and seen["t"].shape == (2,)
