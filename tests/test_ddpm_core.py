"""DDPM/LatentDiffusion internals against closed forms: forward process, posterior, losses, EMA names."""
import pytest
import torch

from ldm.lr_scheduler import LambdaLinearScheduler, LambdaWarmUpCosineScheduler
from ldm.modules.ema import LitEma
from ldm.util import instantiate_from_config
from tests.tiny_configs import ldm_config


@pytest.fixture(scope="module")
def ldm():
    torch.manual_seed(0)
    return instantiate_from_config(ldm_config())


def test_q_sample_and_posterior_closed_forms(ldm):
    s = ldm.schedule
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0, 499, 999])
    ab = s.alphas_cumprod[t].float().view(3, 1, 1, 1)
    assert torch.allclose(ldm.q_sample(x0, t, noise), ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-6)
    xt = ldm.q_sample(x0, t, noise)
    assert torch.allclose(ldm.predict_start_from_noise(xt, t, noise), x0, atol=1e-3)
    mean, var, _ = ldm.q_posterior(x0, xt, t)
    c = 499
    ab_t, ab_prev, beta = (float(s.alphas_cumprod[c]), float(s.alphas_cumprod[c - 1]), float(s.betas[c]))
    expected = (ab_prev ** 0.5 * beta / (1 - ab_t)) * x0[1] + ((1 - beta) ** 0.5 * (1 - ab_prev) / (1 - ab_t)) * xt[1]
    assert torch.allclose(mean[1], expected, atol=1e-5)
    assert var[1].item() == pytest.approx((1 - ab_prev) / (1 - ab_t) * beta, rel=1e-5)


def test_eps_and_x0_parameterisations_train(ldm):
    batch = {"image": torch.rand(2, 32, 32, 3) * 2 - 1, "caption": ["a photo of brick", "a photo of grass"]}
    for param in ("eps", "x0"):
        m = instantiate_from_config(ldm_config(parameterization=param))
        loss, d = m.shared_step(batch)
        loss.backward()
        assert torch.isfinite(loss) and f"train/loss_simple" in d
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.model.parameters())
        assert all(p.requires_grad for p in m.cond_stage_model.parameters())  # cond_stage_trainable
    with pytest.raises(ValueError, match="parameterization"):
        instantiate_from_config(ldm_config(parameterization="v"))


def test_ema_uses_compvis_buffer_names_and_averages():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    ema = LitEma(net, decay=0.5, use_num_updates=False)
    names = {k for k, _ in ema.named_buffers()}
    assert names == {"decay", "num_updates", "0weight", "0bias"}
    w0 = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema(net)
    assert torch.allclose(ema._buffers["0weight"], w0 + 0.5)
    with ema.average_parameters(net):
        assert torch.allclose(net[0].weight, w0 + 0.5)
    assert torch.allclose(net[0].weight, w0 + 1.0)


def test_ldm_with_ema_has_model_ema_keys():
    m = instantiate_from_config(ldm_config(use_ema=True))
    keys = set(m.state_dict())
    assert {"model_ema.decay", "model_ema.num_updates", "model_ema.diffusion_modeltime_embed0weight"} <= keys


def test_lr_schedulers():
    lin = LambdaLinearScheduler(warm_up_steps=[10], f_min=[0.1], f_max=[1.0], f_start=[0.0], cycle_lengths=[110])
    assert lin(0) == 0.0 and lin(5) == pytest.approx(0.5) and lin(10) == pytest.approx(1.0 - 0.9 * 10 / 110 + 0.0, abs=0.1)
    cos = LambdaWarmUpCosineScheduler(warm_up_steps=10, lr_min=0.0, lr_max=1.0, lr_start=0.0, max_decay_steps=110)
    assert cos(10) == pytest.approx(1.0) and cos(110) == pytest.approx(0.0, abs=1e-12) and cos(60) == pytest.approx(0.5)


def test_sampling_returns_latents_of_the_right_shape(ldm):
    z = ldm.sample(batch_size=2, cond=["a photo of brick"] * 2, steps=3, latent_shape=(2, 4, 8, 8))
    assert z.shape == (2, 4, 8, 8) and torch.isfinite(z).all()


@pytest.mark.parametrize("key", ["clip_denoised", "use_positional_encodings"])
def test_keys_we_cannot_honour_are_refused_not_ignored(key):
    from tests.tiny_configs import ldm_config
    from utils.errors import UserError

    cfg = ldm_config(**{key: True})
    with pytest.raises(UserError, match=key):
        instantiate_from_config(cfg)
    cfg = ldm_config(**{key: False})
    assert instantiate_from_config(cfg) is not None


def test_noise_offset_adds_one_constant_per_sample_and_channel_and_is_what_the_model_predicts(monkeypatch):
    from utils.errors import UserError

    m = instantiate_from_config(ldm_config(noise_offset=0.5))
    x = torch.zeros(2, 4, 8, 8)
    torch.manual_seed(3)
    noise = m.training_noise(x)
    torch.manual_seed(3)
    eps, eta = torch.randn_like(x), torch.randn(2, 4, 1, 1)
    assert torch.allclose(noise, eps + 0.5 * eta)               # ε + o·η, η constant over space
    plain = instantiate_from_config(ldm_config())
    torch.manual_seed(3)
    assert torch.equal(plain.training_noise(x), eps)            # o = 0: LDM's own ε, bit for bit
    # a training step adds this noise and makes it the ε target
    seen = {}
    monkeypatch.setattr(m, "loss_from_prediction", lambda out, target, t: seen.setdefault("target", target) * 0)
    monkeypatch.setattr(m, "add_embedding_regulariser", lambda loss, d: (loss, {}))
    torch.manual_seed(4)
    m.p_losses(x, m.get_learned_conditioning(["a photo of brick"] * 2), torch.tensor([10, 900]))
    torch.manual_seed(4)
    assert torch.allclose(seen["target"], torch.randn_like(x) + 0.5 * torch.randn(2, 4, 1, 1))
    with pytest.raises(UserError, match="noise_offset"):
        instantiate_from_config(ldm_config(noise_offset=-0.1))
