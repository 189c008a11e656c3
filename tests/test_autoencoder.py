"""First stage: CompVis key layout, tiny-model shapes/KL, Lightning 2 manual-optimisation training."""
from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch

from ldm.models.autoencoder import AutoencoderKL, IdentityFirstStage, VQModelInterface
from ldm.modules.diffusionmodules.model import AttnBlock, Decoder, Encoder
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.modules.losses.contperceptual import KLReconstructionLoss, LPIPSWithDiscriminator
from tests.reference_manifest import checkpoint_keys

LARGE_DDCONFIG = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128,
                      ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
TINY_DDCONFIG = dict(double_z=True, z_channels=4, resolution=64, in_channels=3, out_ch=3, ch=32,
                     ch_mult=[1, 2, 4], num_res_blocks=1, attn_resolutions=[], dropout=0.0)
KL_LOSS = {"target": "ldm.modules.losses.contperceptual.KLReconstructionLoss",
           "params": {"kl_weight": 1.0e-6}}
GAN_LOSS = {"target": "ldm.modules.losses.contperceptual.LPIPSWithDiscriminator",
            "params": {"disc_start": 0, "kl_weight": 1.0e-6, "perceptual_weight": 0.0,
                       "disc_num_layers": 2}}


def tiny_ae(lossconfig=None, **kw):
    return AutoencoderKL(ddconfig=TINY_DDCONFIG, lossconfig=lossconfig or {"target": "torch.nn.Identity"},
                         embed_dim=4, **kw)


def _first_stage_manifest():
    return checkpoint_keys(group="first_stage", prefix="first_stage_model.")


def test_large_first_stage_matches_checkpoint_manifest_on_meta():
    with torch.device("meta"):
        model = AutoencoderKL(ddconfig=LARGE_DDCONFIG, lossconfig={"target": "torch.nn.Identity"}, embed_dim=4)
    sd = model.state_dict()
    assert all(t.is_meta for t in sd.values())
    assert len(sd) == 248
    assert sum(t.numel() for t in sd.values()) == 83_653_863
    expected = _first_stage_manifest()
    got = {k: tuple(v.shape) for k, v in sd.items()}
    assert got == expected


def test_tiny_roundtrip_shapes_and_backward():
    torch.manual_seed(0)
    model = tiny_ae()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    rec, posterior = model(x)
    assert isinstance(posterior, DiagonalGaussianDistribution)
    assert posterior.mean.shape == (1, 4, 16, 16) and rec.shape == x.shape
    (rec.abs().mean() + posterior.kl().mean()).backward()
    assert model.encoder.conv_in.weight.grad is not None
    assert model.decoder.conv_out.weight.grad is not None

    z = posterior.sample(generator=torch.Generator().manual_seed(1))
    assert torch.equal(z, posterior.sample(generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        assert model.decode(posterior.mode()).shape == (1, 3, 64, 64)


def test_encoder_decoder_with_level_attention():
    cfg = dict(TINY_DDCONFIG, attn_resolutions=[16])
    enc, dec = Encoder(**cfg), Decoder(**cfg)
    assert len(enc.down[2].attn) == 1 and len(dec.up[2].attn) == 2
    with torch.no_grad():
        h = enc(torch.randn(1, 3, 32, 32))
        assert h.shape == (1, 8, 8, 8)
        assert dec(h[:, :4]).shape == (1, 3, 32, 32)


def test_attnblock_matches_explicit_softmax():
    torch.manual_seed(0)
    blk = AttnBlock(32)
    x = torch.randn(2, 32, 5, 7)
    h = blk.norm(x)
    q, k, v = (m(h).reshape(2, 32, 35) for m in (blk.q, blk.k, blk.v))
    w = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)
    ref = x + blk.proj_out(torch.einsum("bij,bcj->bci", w, v).reshape(2, 32, 5, 7))
    assert torch.allclose(blk(x), ref, atol=1e-5)


def test_kl_and_nll_match_closed_form():
    torch.manual_seed(0)
    params = torch.randn(3, 8, 4, 4)
    d = DiagonalGaussianDistribution(params)
    mean, logvar = params[:, :4], params[:, 4:]
    closed = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=[1, 2, 3])
    assert torch.allclose(d.kl(), closed, atol=1e-5)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, (0.5 * logvar).exp()), torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(d.kl(), ref.sum(dim=[1, 2, 3]), atol=1e-4)
    other = DiagonalGaussianDistribution(torch.randn(3, 8, 4, 4))
    ref2 = torch.distributions.kl_divergence(
        torch.distributions.Normal(d.mean, d.std), torch.distributions.Normal(other.mean, other.std))
    assert torch.allclose(d.kl(other), ref2.sum(dim=[1, 2, 3]), atol=1e-4)
    s = d.sample()
    nll = -torch.distributions.Normal(d.mean, d.std).log_prob(s).sum(dim=[1, 2, 3])
    assert torch.allclose(d.nll(s), nll, atol=1e-3)
    clamped = DiagonalGaussianDistribution(torch.cat([torch.zeros(1, 1), torch.full((1, 1), 100.0)], 1))
    assert clamped.logvar.item() == 20.0
    det = DiagonalGaussianDistribution(params, deterministic=True)
    assert torch.equal(det.sample(), det.mean) and det.kl().item() == 0.0


class _RandomImages(torch.utils.data.Dataset):
    """The tiny AE is fully convolutional; 32×32 images keep the Lightning runs cheap on 2 cores."""

    def __init__(self, n=4, size=32):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, size, size, 3, generator=g) * 2 - 1

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def _trainer():
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


@pytest.mark.parametrize("lossconfig", [KL_LOSS, GAN_LOSS], ids=["kl", "gan"])
def test_lightning_fit_changes_weights(lossconfig):
    torch.manual_seed(0)
    model = tiny_ae(lossconfig)
    model.learning_rate = 1e-3
    before = copy.deepcopy(model.state_dict())
    loader = torch.utils.data.DataLoader(_RandomImages(), batch_size=1)
    _trainer().fit(model, loader)
    after = model.state_dict()
    assert not torch.equal(before["encoder.conv_in.weight"], after["encoder.conv_in.weight"])
    assert not torch.equal(before["decoder.conv_out.weight"], after["decoder.conv_out.weight"])
    if lossconfig is GAN_LOSS:
        assert isinstance(model.loss, LPIPSWithDiscriminator)
        assert len(model.trainer.optimizers) == 2
        assert not torch.equal(before["loss.discriminator.main.0.weight"],
                               after["loss.discriminator.main.0.weight"])
        # logvar is not in any optimizer (CompVis), so it must stay put.
        assert torch.equal(before["loss.logvar"], after["loss.logvar"])
    else:
        assert isinstance(model.loss, KLReconstructionLoss)
        assert len(model.trainer.optimizers) == 1
    assert all(p.requires_grad for p in model.parameters() if p is not getattr(model.loss, "logvar", None))


def test_validate_and_log_images():
    model = tiny_ae(GAN_LOSS)
    loader = torch.utils.data.DataLoader(_RandomImages(n=1), batch_size=1)
    metrics = _trainer().validate(model, loader, verbose=False)[0]
    assert "val/rec_loss" in metrics and "val/disc_loss" in metrics
    batch = next(iter(loader))
    logs = model.log_images(batch, N=1)
    assert set(logs) == {"inputs", "reconstructions", "samples"}
    for v in logs.values():
        assert v.shape == (1, 3, 32, 32) and v.min() >= -1 and v.max() <= 1


def test_default_learning_rate_and_single_optimizer():
    model = tiny_ae(KL_LOSS)
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 4.5e-6


def test_init_from_ckpt_strips_ldm_prefix(tmp_path, capsys):
    torch.manual_seed(0)
    src = tiny_ae()
    sd = {"first_stage_model." + k: v for k, v in src.state_dict().items()}
    sd["model_ema.decay"] = torch.tensor(0.9999)
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": sd}, path)
    torch.manual_seed(1)
    dst = tiny_ae(ckpt_path=str(path))
    assert "0 missing and 0 unexpected" in capsys.readouterr().out
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        tiny_ae(ckpt_path=str(tmp_path / "nope.ckpt"))


def test_gan_loss_needs_vgg_weights_for_perceptual_term():
    with pytest.raises(ValueError, match="VGG16 weights"):
        LPIPSWithDiscriminator(disc_start=0, perceptual_weight=1.0)
    loss = LPIPSWithDiscriminator(disc_start=0, perceptual_weight=0.0)
    assert not hasattr(loss, "perceptual_loss") and loss.has_discriminator


def test_vq_interface_and_identity():
    torch.manual_seed(0)
    model = VQModelInterface(embed_dim=3, ddconfig=dict(TINY_DDCONFIG, double_z=False, z_channels=3),
                             lossconfig={"target": "torch.nn.Identity"}, n_embed=16)
    assert model.quantize.embedding.weight.shape == (16, 3)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        h = model.encode(x)
        assert h.shape == (1, 3, 8, 8)
        dec_q, dec_raw = model.decode(h), model.decode(h, force_not_quantize=True)
    assert dec_q.shape == dec_raw.shape == (1, 3, 32, 32)
    assert not torch.allclose(dec_q, dec_raw)

    ident = IdentityFirstStage(vq_interface=True)
    assert ident.encode(x) is x and ident.decode(x) is x
    assert ident.quantize(x)[0] is x
    assert IdentityFirstStage().quantize(x) is x


class _MaskedImages(torch.utils.data.Dataset):
    """Random images with a thin horizontal 'crack' mask on the first, an all-zero mask (normal) on the second."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(2, 32, 32, 3, generator=g) * 2 - 1
        self.masks = torch.zeros(2, 32, 32)
        self.masks[0, 15, 4:28] = 1.0

    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {"image": self.images[i], "mask": self.masks[i]}


def test_defect_loss_weight_reaches_the_reconstruction_loss(monkeypatch):
    """w > 1 weights the L1 term by 1 + (w − 1)·mask inside defects, 1 on normal pixels and images."""
    torch.manual_seed(0)
    model = tiny_ae(KL_LOSS, defect_loss_weight=10.0)
    model.learning_rate = 1e-3
    seen = []
    forward = model.loss.forward

    def spy(*args, **kw):
        seen.append(kw.get("weights"))
        return forward(*args, **kw)

    monkeypatch.setattr(model.loss, "forward", spy)
    data = _MaskedImages()
    _trainer().fit(model, torch.utils.data.DataLoader(data, batch_size=2))
    assert len(seen) == 3 and all(w is not None for w in seen)
    expected = 1.0 + 9.0 * data.masks[:, None]
    torch.testing.assert_close(seen[0], expected)
    assert seen[0][0, 0, 15, 4:28].eq(10.0).all() and seen[0][1].eq(1.0).all()
    # and the loss is the closed form: sum of weighted |x − x̂| per sample + kl_weight · KL
    x = model.get_input(next(iter(torch.utils.data.DataLoader(data, batch_size=2))), "image")
    model.eval()
    rec, post = model(x, sample_posterior=False)
    loss, _ = model.loss(x, rec, post, 0, 0, weights=expected)
    closed = (expected * (x - rec).abs()).sum() / 2 + 1e-6 * post.kl().sum() / 2
    torch.testing.assert_close(loss, closed, rtol=1e-5, atol=1e-4)


def test_uniform_loss_by_default_and_weight_below_one_refused():
    assert tiny_ae(KL_LOSS).reconstruction_weights({"image": torch.zeros(1, 8, 8, 3),
                                                    "mask": torch.ones(1, 8, 8)}) is None
    with pytest.raises(ValueError, match="defect_loss_weight"):
        tiny_ae(KL_LOSS, defect_loss_weight=0.5)
