"""FAST: FARM architecture, adaptor, the two-term training step, what trains, artifacts."""
import pytest
import torch

from ldm.models.diffusion.adaptor import FineTune, apply_adaptor, build_adaptor
from ldm.models.diffusion.fast import available_artifact_steps
from ldm.models.diffusion.latent_mask import latent_mask
from ldm.models.recon_net import FARM
from ldm.util import instantiate_from_config
from tests.tiny_configs import fast_config

# names of the official ldm.models.recon_net.FARM state dict (so its exported weights load by name)
OFFICIAL_FARM_PREFIXES = {"encoder.block1", "encoder.block2", "encoder.block3", "decoder.f_conv", "decoder.conv1",
                          "decoder.conv2", "decoder.final_conv", "time_embedding", "t_proj", "bg_weight_map_mlp"}


def test_farm_default_shapes_and_parameter_count():
    farm = FARM()
    n = sum(p.numel() for p in farm.parameters())
    assert abs(n - 1.86e6) < 0.01e6, n
    assert {k.rsplit(".", 2)[0] if k.count(".") > 1 else k.split(".")[0] for k in farm.state_dict()} >= {"t_proj"}
    prefixes = {".".join(k.split(".")[:2]) if k.startswith(("encoder", "decoder")) else k.split(".")[0]
                for k in farm.state_dict()}
    assert prefixes == OFFICIAL_FARM_PREFIXES
    x = torch.randn(2, 4, 32, 32)
    m = (torch.rand(2, 1, 32, 32) > 0.5).float()
    out = farm(x, m, torch.tensor([10, 900]))
    assert out.shape == (2, 4, 32, 32)


@pytest.mark.parametrize("size", [16, 64])
def test_farm_other_latent_sizes(size):
    farm = FARM(base_width=8, latent_size=size)
    out = farm(torch.randn(1, 4, size, size), torch.ones(1, 1, size, size), torch.tensor([5]))
    assert out.shape == (1, 4, size, size)
    # a model configured for 32 also runs on another size (soft mask resized)
    out = FARM(base_width=8)(torch.randn(1, 4, size, size), torch.ones(1, 1, size, size), torch.tensor([5]))
    assert out.shape == (1, 4, size, size)


def test_soft_mask_is_one_inside_and_between_zero_and_one_outside():
    farm = FARM(base_width=8)
    mask = torch.zeros(3, 1, 32, 32)
    mask[:, :, 8:24, 8:24] = 1
    sm = farm.soft_mask(mask, torch.tensor([0, 500, 999]), (8, 8))
    inside = torch.nn.functional.interpolate(mask, size=(8, 8), mode="nearest").bool()
    assert torch.all(sm[inside] == 1)
    assert torch.all((sm[~inside] > 0) & (sm[~inside] < 1))


def test_adaptor_modes():
    eps = torch.randn(2, 4, 8, 8)
    m = torch.ones(2, 1, 8, 8)
    assert sum(p.numel() for p in FineTune(4).parameters()) == pytest.approx(1.11e6, abs=0.01e6)
    assert build_adaptor("off") is None and torch.equal(apply_adaptor(None, "off", eps, m), eps)
    assert build_adaptor(False) is None  # YAML's reading of `adaptor: off` (model.params.adaptor=off)
    res = build_adaptor("residual", widths=(8,))
    assert torch.equal(apply_adaptor(res, "residual", eps, m), eps)  # zero-init: starts at the UNet
    rep = build_adaptor("replace", widths=(8,))
    assert not torch.allclose(apply_adaptor(rep, "replace", eps, m), eps)
    with pytest.raises(ValueError, match="adaptor mode"):
        build_adaptor("sideways")


def test_latent_mask_is_binary_and_resized():
    mask = torch.zeros(1, 64, 64)
    mask[:, 10:40, 20:50] = 1
    lm = latent_mask(mask, (8, 8))
    assert lm.shape == (1, 1, 8, 8) and set(lm.unique().tolist()) <= {0.0, 1.0} and lm.sum() > 0


def _batch(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, size, size)
    mask[:, size // 4: 3 * size // 4, size // 4: size // 2] = 1
    return {"image": torch.rand(n, size, size, 3, generator=g) * 2 - 1, "mask": mask,
            "caption": ["Anomaly *"] * n, "name": ["tex+scratch"] * n}


@pytest.fixture()
def fast_model():
    torch.manual_seed(0)
    model = instantiate_from_config(fast_config())
    _pretend_pretrained(model.model)
    model.learning_rate = 2e-3
    return model


def _pretend_pretrained(unet):
    """A fresh UNet has zero-initialised output convs (no gradient passes); a pretrained one does not."""
    with torch.no_grad():
        for p in unet.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.normal_(0, 0.02)


def test_training_step_updates_only_trainable_parts(fast_model):
    m = fast_model
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("FARM.", "fine.", "embedding_manager.")) for n in trainable)
    assert {n.split(".")[0] for n in trainable} == {"FARM", "fine", "embedding_manager"}
    assert not m.model.training and not m.cond_stage_model.training and not m.first_stage_model.training
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = m.configure_optimizers()
    m.train()
    assert not m.model.training  # frozen parts stay in eval mode
    loss, _ = m.shared_step(_batch())
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = m.state_dict()
    for k, v in after.items():
        changed = not torch.equal(before[k], v)
        if k.startswith(("model.", "cond_stage_model.", "first_stage_model.")) or k in ("betas",):
            assert not changed, f"frozen tensor changed: {k}"
    for prefix in ("FARM.", "fine.", "embedding_manager."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix


def test_both_loss_terms_reach_farm(fast_model):
    m = fast_model
    m.train()
    batch = _batch()
    for weight_noise, weight_farm in ((1.0, 0.0), (0.0, 1.0)):
        m.zero_grad()
        m.l_simple_weight, m.farm_loss_weight = weight_noise, weight_farm
        loss, _ = m.shared_step(batch)
        loss.backward()
        grad = sum(p.grad.abs().sum() for p in m.FARM.parameters() if p.grad is not None)
        assert grad > 0, (weight_noise, weight_farm)


def test_unfreeze_model_trains_the_unet():
    m = instantiate_from_config(fast_config(unfreeze_model=True))
    assert all(p.requires_grad for p in m.model.parameters())


def test_loss_decreases_on_a_tiny_dataset(fast_model):
    m = fast_model
    batch = _batch(n=8)

    def fixed_loss():
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(123)
            return float(m.shared_step(batch)[0])

    opt = m.configure_optimizers()
    m.train()
    start = fixed_loss()
    torch.manual_seed(1)
    for _ in range(40):
        loss, _ = m.shared_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = fixed_loss()
    assert end < 0.8 * start, (start, end)


def test_exported_artifacts_reload_with_identical_outputs(fast_model, tmp_path):
    m = fast_model
    opt = m.configure_optimizers()
    m.train()
    loss, _ = m.shared_step(_batch())
    loss.backward()
    opt.step()
    m.eval()
    paths = m.export_artifacts(tmp_path, 7)
    assert sorted(p.name for p in paths) == sorted(f"{s}.{ext}" for s in ("FARM-7", "embeddings", "embeddings_gs-7",
                                                                      "fine-7") for ext in ("pt", "safetensors"))
    for p in paths:  # plain tensors: loadable with weights_only=True, or without pickle at all
        if p.suffix == ".pt":
            torch.load(p, weights_only=True)
        else:
            from utils.tensor_files import load_safetensors

            assert load_safetensors(p)[0]
    assert available_artifact_steps(tmp_path) == [7]
    backbone = {k: v for k, v in m.state_dict().items() if not k.startswith(("FARM.", "fine.", "embedding_manager."))}
    torch.save({"state_dict": backbone}, tmp_path / "backbone.ckpt")  # what --actual_resume points to
    fresh = instantiate_from_config(fast_config(ckpt_path=str(tmp_path / "backbone.ckpt")))
    fresh.eval()
    assert not torch.equal(fresh.FARM.t_proj.weight, m.FARM.t_proj.weight)
    with pytest.raises(ValueError, match=r"available: \[7\]"):
        fresh.load_artifacts(tmp_path, 10000)
    fresh.load_artifacts(tmp_path, 7)
    x = torch.randn(2, 4, 8, 8)
    mask = torch.ones(2, 1, 8, 8)
    t = torch.tensor([3, 600])
    c = {"caption": ["Anomaly *"] * 2, "name": ["tex+scratch"] * 2}
    with torch.no_grad():
        a = m.apply_model(x, t, m.get_learned_conditioning(c), mask=mask)
        b = fresh.apply_model(x, t, fresh.get_learned_conditioning(c), mask=mask)
        assert torch.equal(m.FARM(x, mask, t), fresh.FARM(x, mask, t))
    assert torch.equal(a, b)


def test_unfrozen_unet_has_its_own_rate_and_is_part_of_the_artifacts(tmp_path):
    """A fine-tuned backbone UNet (``unfreeze_model``) must reach generation: without the ``unet-N``
    artifact the generator would silently sample with the untouched backbone."""
    torch.manual_seed(0)
    m = instantiate_from_config(fast_config(unfreeze_model=True, backbone_learning_rate=1e-5))
    _pretend_pretrained(m.model)
    m.learning_rate = 2e-3
    backbone = {k: v.clone() for k, v in m.state_dict().items()
                if not k.startswith(("FARM.", "fine.", "embedding_manager."))}
    opt = m.configure_optimizers()
    rates = {g["lr"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert set(rates) == {2e-3, 1e-5}
    assert rates[1e-5] == {id(p) for p in m.model.parameters()}
    assert {id(p) for p in m.FARM.parameters()} <= rates[2e-3]
    m.train()
    loss, _ = m.shared_step(_batch())
    loss.backward()
    opt.step()
    m.eval()
    assert any(not torch.equal(backbone[k], v) for k, v in m.state_dict().items() if k.startswith("model."))
    names = {p.name for p in m.export_artifacts(tmp_path, 3)}
    assert {"unet-3.pt", "unet-3.safetensors"} <= names
    torch.save({"state_dict": backbone}, tmp_path / "backbone.ckpt")
    fresh = instantiate_from_config(fast_config(unfreeze_model=True, ckpt_path=str(tmp_path / "backbone.ckpt")))
    fresh.eval()
    fresh.load_artifacts(tmp_path, 3)
    x, mask, t = torch.randn(2, 4, 8, 8), torch.ones(2, 1, 8, 8), torch.tensor([3, 600])
    c = {"caption": ["Anomaly *"] * 2, "name": ["tex+scratch"] * 2}
    with torch.no_grad():
        assert torch.equal(m.apply_model(x, t, m.get_learned_conditioning(c), mask=mask),
                           fresh.apply_model(x, t, fresh.get_learned_conditioning(c), mask=mask))
    (tmp_path / "unet-3.pt").unlink()
    (tmp_path / "unet-3.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="unet-3"):
        instantiate_from_config(fast_config(unfreeze_model=True)).load_artifacts(tmp_path, 3)
