"""Own minimal taming: quantiser, PatchGAN, GAN losses, offline LPIPS."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.losses.lpips import LPIPS, vgg16_features
from taming.modules.losses.vqperceptual import adopt_weight, hinge_d_loss, vanilla_d_loss
from taming.modules.vqvae.quantize import VectorQuantizer2


def test_quantizer_nearest_code_straight_through_and_perplexity():
    torch.manual_seed(0)
    n_e, e_dim = 8, 4
    vq = VectorQuantizer2(n_e, e_dim, beta=0.25)
    z = torch.randn(2, e_dim, 3, 5, requires_grad=True)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.randn(n_e, e_dim))
    z_q, loss, (perplexity, min_encodings, idx) = vq(z)
    assert z_q.shape == z.shape and min_encodings is None and idx.shape == (30,)

    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, e_dim)
    nearest = torch.cdist(flat, vq.embedding.weight.detach()).argmin(dim=1)
    assert torch.equal(idx, nearest)
    expected = vq.embedding.weight.detach()[nearest].reshape(2, 3, 5, e_dim).permute(0, 3, 1, 2)
    assert torch.allclose(z_q, expected, atol=1e-6)
    assert 1.0 - 1e-5 <= perplexity.item() <= n_e + 1e-5
    assert loss.item() > 0

    g = torch.randn_like(z_q)
    (z_q * g).sum().backward()
    assert torch.allclose(z.grad, g)  # straight-through: identity Jacobian

    vq.zero_grad()
    _, loss, _ = vq(z.detach())
    loss.backward()
    assert vq.embedding.weight.grad is not None and vq.embedding.weight.grad.abs().sum() > 0


def test_quantizer_perplexity_bounds_and_index_shapes():
    vq = VectorQuantizer2(4, 2, beta=0.25, sane_index_shape=True, legacy=False)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [-1, 0], [0, -1]]))
    same = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1).expand(1, 2, 2, 2)
    _, _, (p, _, idx) = vq(same)
    assert abs(p.item() - 1.0) < 1e-4 and idx.shape == (1, 2, 2)
    spread = vq.embedding.weight.detach().t().reshape(1, 2, 2, 2) * 3
    z_q, _, (p, _, idx) = vq(spread)
    assert abs(p.item() - 4.0) < 1e-3
    assert torch.allclose(vq.get_codebook_entry(idx.reshape(-1), (1, 2, 2, 2)), z_q)


def test_quantizer_remap(tmp_path):
    path = tmp_path / "used.npy"
    np.save(path, np.array([0, 2, 5]))
    vq = VectorQuantizer2(6, 3, beta=0.25, remap=str(path), unknown_index="extra")
    assert vq.re_embed == 4
    inds = torch.tensor([[0, 2, 5, 3]])
    mapped = vq.remap_to_used(inds)
    assert mapped.tolist() == [[0, 1, 2, 3]]
    assert vq.unmap_to_all(mapped).tolist() == [[0, 2, 5, 0]]


def test_discriminator_shapes_and_init():
    torch.manual_seed(0)
    d = NLayerDiscriminator(input_nc=3, ndf=8, n_layers=3).apply(weights_init)
    assert isinstance(d.main, torch.nn.Sequential)
    assert d.main[0].weight.std().item() < 0.05
    assert d.main[2].bias is None  # conv before BatchNorm has no bias
    assert d(torch.randn(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    da = NLayerDiscriminator(input_nc=4, ndf=8, n_layers=2, use_actnorm=True)
    out = da(torch.randn(2, 4, 32, 32))
    assert out.shape == (2, 1, 6, 6) and da.main[3].initialized.item() == 1


def test_gan_losses_and_adopt_weight():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert torch.isclose(hinge_d_loss(real, fake), torch.tensor(0.5 * (0.25 + 0.5)))
    ref = 0.5 * (torch.nn.functional.softplus(-real).mean() + torch.nn.functional.softplus(fake).mean())
    assert torch.isclose(vanilla_d_loss(real, fake), ref)
    assert adopt_weight(1.0, 5, threshold=10) == 0.0
    assert adopt_weight(1.0, 10, threshold=10) == 1.0


@pytest.fixture(scope="module")
def vgg_path(tmp_path_factory):
    """A randomly initialised VGG16 saved in torchvision's ``features.*`` layout."""
    torch.manual_seed(0)
    feats = vgg16_features()
    sd = {f"features.{k}": v for k, v in feats.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the head too
    path = tmp_path_factory.mktemp("vgg") / "vgg16.pth"
    torch.save(sd, path)
    return path


def test_lpips_random_vgg_distance(tmp_path, vgg_path):
    lp = LPIPS(vgg_weights=str(vgg_path))
    assert torch.equal(lp.net.slice1[0].weight, torch.load(vgg_path)["features.0.weight"])
    assert "net.slice5.28.weight" in lp.state_dict() and "lin4.model.1.weight" in lp.state_dict()
    lp.train()
    assert not lp.training and not any(p.requires_grad for p in lp.parameters())
    torch.manual_seed(1)
    a, b = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    d = lp(a, b)
    assert d.shape == (2, 1, 1, 1) and (d >= 0).all() and (d > 0).all()
    assert torch.all(lp(a, a) == 0)

    lin = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate([64, 128, 256, 512, 512])}
    lin_path = tmp_path / "lin.pth"
    torch.save(lin, lin_path)
    lp2 = LPIPS(vgg_weights=str(vgg_path), lin_weights=str(lin_path))
    assert torch.equal(lp2.lin2.model[1].weight, lin["lin2.model.1.weight"])
    assert (lp2(a, b) >= 0).all()


def test_lpips_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="VGG16 weights"):
        LPIPS()
    missing = tmp_path / "missing_vgg.pth"
    with pytest.raises(FileNotFoundError, match="missing_vgg.pth"):
        LPIPS(vgg_weights=str(missing))
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="bad.pth"):
        LPIPS(vgg_weights=str(bad))


def test_gan_loss_with_perceptual_term(vgg_path):
    from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
    from ldm.modules.losses.contperceptual import LPIPSWithDiscriminator

    loss = LPIPSWithDiscriminator(disc_start=10, perceptual_weight=1.0, vgg_weights=str(vgg_path),
                                  disc_num_layers=2)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    rec = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    post = DiagonalGaussianDistribution(torch.randn(2, 8, 8, 8))
    total, log = loss(x, rec, post, 0, global_step=0, last_layer=None, split="train")
    assert torch.isfinite(total) and log["train/disc_factor"].item() == 0.0
    d_loss, log_d = loss(x, rec, post, 1, global_step=10, split="train")
    assert d_loss.item() > 0 and "train/logits_real" in log_d
