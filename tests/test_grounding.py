"""GroundingAnomaly: GSM and LoRA leave the backbone exact at initialisation, the semantic map, MNT,
NDI, the training step, artifacts, main.py with the shipped config, the paper's three ablations
(binary map, w/o GSM, w/o NDI) and mask textual inversion."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import generate_with_mask as gen
import main as main_mod
from ldm.data.generated_masks import DefectMasksDataset, GeneratedMasks
from ldm.data.mixed import MixedNormalAnomalyDataset
from ldm.models.diffusion.mnt import mix_batch, normal_count
from ldm.data.texture_ad import build_texture_ad
from ldm.generation import generate_pairs, load_run
from ldm.generation import make_sampler as run_sampler
from ldm.models.diffusion.grounding import available_artifact_steps
from ldm.models.diffusion.mask_ti import mask_diversity
from ldm.models.diffusion.samplers import MaskGuidance
from ldm.models.diffusion.samplers.rng import BatchRNG
from ldm.modules.grounding import SpatialConditioning
from ldm.modules.grounding.gsm import transformer_blocks
from ldm.util import instantiate_from_config
from tests.run_fixture import backbone_ckpt_from_config, gen_args, make_dataset, make_run, record_timesteps

ROOT = Path(__file__).resolve().parents[1]
from tests.tiny_configs import UNET, ldm_config
from tests.tiny_configs import grounding_config as tiny_grounding_config
from utils.errors import InputNotFound, UserError

NAME = "tex+scratch"
NAMES = [NAME, "tex+crack"]
BACKBONE = ("model.", "first_stage_model.", "cond_stage_model.")


def grounding_config(lora_rank=2, names=NAMES, scm=None, **overrides) -> dict:
    """``scm``: entries added to the tiny config's scm_config (e.g. ``{"binary_map": True}``)."""
    cfg = tiny_grounding_config(names=names, lora_rank=lora_rank, **overrides)
    cfg["params"]["scm_config"].update(scm or {})
    return cfg


def _pretrained_(module, seed=0):
    """A "pretrained" backbone: move the zero-initialised output convs off zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim > 1 and p.abs().sum() == 0:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def backbone_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    ldm = instantiate_from_config(ldm_config())
    _pretrained_(ldm.model)
    path = tmp_path_factory.mktemp("backbone") / "ldm.ckpt"
    torch.save({"state_dict": ldm.state_dict()}, path)
    return ldm.eval(), path


def _model(backbone_ckpt, **kw):
    torch.manual_seed(1)
    m = instantiate_from_config(grounding_config(ckpt_path=str(backbone_ckpt[1]), **kw))
    m.learning_rate = 1e-3
    return m


def _inputs(b=2):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, 4, 8, 8, generator=g)
    t = torch.tensor([7, 640])[:b]
    mask = torch.zeros(b, 32, 32)
    mask[:, 8:24, 6:18] = 1
    return x, t, mask


def _grounded_output(model):
    """The UNet output of ``model`` on fixed inputs, conditioned on its text and SCM tokens."""
    x, t, mask = _inputs()
    c = {"caption": ["Anomaly *"] * 2, "name": [NAME] * 2}
    with torch.no_grad():
        return model.apply_model(x, t, model.get_learned_conditioning(c),
                                 grounding=model.grounding_tokens(mask, [NAME] * 2))


def _backbone_out(ldm, x, t, captions):
    with torch.no_grad():
        return ldm.apply_model(x, t, ldm.get_learned_conditioning(captions))


def _ours(m, x, t, mask, captions):
    with torch.no_grad():
        c = m.get_learned_conditioning(captions)  # no placeholder: the plain text embedding
        return m.apply_model(x, t, c, grounding=m.grounding_tokens(mask, [NAME] * x.shape[0]))


# ----------------------------------------------------------------------------- GSM / LoRA at initialisation
def test_gate_zero_gives_the_backbone_output_and_keys_are_unchanged(backbone_ckpt):
    ldm, _ = backbone_ckpt
    m = _model(backbone_ckpt, lora_rank=0).eval()
    x, t, mask = _inputs()
    captions = ["a photo of tex"] * 2
    ref = _backbone_out(ldm, x, t, captions)
    assert torch.equal(_ours(m, x, t, mask, captions), ref)  # bit-identical, γ = 0 in every block
    # the backbone's checkpoint keys are exactly the plain LDM's; new modules live under their own names
    ours = {k for k in m.state_dict() if k.startswith(BACKBONE)}
    assert ours == {k for k in ldm.state_dict() if k.startswith(BACKBONE)}
    new = {k.split(".")[0] for k in m.state_dict() if not k.startswith(BACKBONE)} - {"embedding_manager"}
    assert {"scm", "gsm"} <= new and len(m.gsm) == len(transformer_blocks(m.model.diffusion_model)) == 4
    # the test can fail: open one gate
    with torch.no_grad():
        m.gsm[1].alpha_attn.fill_(0.5)
    assert not torch.allclose(_ours(m, x, t, mask, captions), ref, atol=1e-6)


def test_lora_at_init_gives_the_backbone_output(backbone_ckpt):
    ldm, _ = backbone_ckpt
    m = _model(backbone_ckpt, lora_rank=3).eval()
    assert len(m.lora) == 4 * 2 * 4  # 4 blocks × (attn1, attn2) × (q, k, v, out)
    assert all(lo.down.weight.shape[0] == 3 for lo in m.lora.values())
    x, t, mask = _inputs()
    captions = ["a photo of tex"] * 2
    ref = _backbone_out(ldm, x, t, captions)
    assert torch.equal(_ours(m, x, t, mask, captions), ref)
    with torch.no_grad():
        next(iter(m.lora.values())).up.weight.normal_(0, 0.1)
    assert not torch.allclose(_ours(m, x, t, mask, captions), ref, atol=1e-6)


# ----------------------------------------------------------------------------- SCM
def test_semantic_map_holds_two_defect_types_in_one_image():
    scm = SpatialConditioning(["tex+scratch", "tex+crack", "wood+hole"], token_dim=6, context_dim=16,
                              encoder="tiny", encoder_params={"widths": [4]}, grid=2)
    labels = torch.zeros(2, 12, 12)
    labels[0, 1:4, 1:5] = 1      # scratch
    labels[0, 6:10, 7:11] = 2    # crack
    labels[1, 2:6, 2:6] = 1      # one binary mask of the second sample
    lab, products, anomalies = scm.labels_from_masks(labels, [["tex+scratch", "tex+crack"], "wood+hole"])
    assert products == ["tex", "wood"] and anomalies == [["tex+scratch", "tex+crack"], ["wood+hole"]]
    sem = scm.semantic_map(lab, products, anomalies)
    assert sem.shape == (2, 6, 12, 12)
    tok = {**{k: v.detach() for k, v in scm.anomaly_tokens.items()},
           **{k: v.detach() for k, v in scm.product_tokens.items()}}
    for (b, value), key in {(0, 0): "tex", (0, 1): "tex+scratch", (0, 2): "tex+crack",
                            (1, 0): "wood", (1, 1): "wood+hole"}.items():
        where = labels[b] == value
        got = sem[b].permute(1, 2, 0)[where]
        assert torch.equal(got, tok[key].expand_as(got)), key
    assert not torch.equal(tok["tex+scratch"], tok["tex+crack"])
    out = scm(lab, products, anomalies)
    assert out.shape == (2, 4, 16)
    # gradients reach exactly the tokens that were painted
    out.sum().backward()
    assert scm.anomaly_tokens["tex+crack"].grad.abs().sum() > 0
    assert scm.product_tokens["wood"].grad.abs().sum() > 0
    with pytest.raises(UserError, match=r"no anomaly token for 'tex\+dent'"):
        scm.semantic_map(lab, products, [["tex+scratch", "tex+dent"], ["wood+hole"]])
    with pytest.raises(ValueError, match="label values"):
        scm.semantic_map(lab, products, [["tex+scratch"], ["wood+hole"]])  # label 2 without a second name


# ----------------------------------------------------------------------------- MNT
@pytest.fixture(scope="module")
def texture_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("texture") / "texture-ad"
    build_texture_ad(root, size=64, train_good=3, test_good=1, per_defect=6, textures=["brick"],
                     defects=["scratch"])
    return root


def test_mnt_batch_ratio(texture_data):
    # exact share when r·B is an integer; otherwise the running share never drifts by half an image
    assert [normal_count(8, 0.5, k) for k in range(4)] == [4, 4, 4, 4]
    assert [normal_count(8, 0.0, k) for k in range(3)] == [0, 0, 0]
    assert [normal_count(8, 1.0, k) for k in range(3)] == [8, 8, 8]
    counts = [normal_count(8, 0.3, k) for k in range(50)]
    assert set(counts) == {2, 3}
    assert all(abs(sum(counts[:k]) - 0.3 * 8 * k) <= 0.5 for k in range(1, 51))
    with pytest.raises(UserError, match="mnt_ratio"):
        normal_count(8, 1.5)

    ds = MixedNormalAnomalyDataset(root=texture_data, category="brick", defect="scratch", size=32,
                                   anomaly_split="all", repeats=2, max_normals=2)
    assert ds.normal_count_of("brick") == 2
    normal_pool = [ds.normals["brick"][j]["image"] for j in range(2)]
    items = [ds[i] for i in range(4)]
    batch = {"image": torch.from_numpy(np.stack([it["image"] for it in items])),
             "mask": torch.from_numpy(np.stack([it["mask"] for it in items])),
             "normal_image": torch.from_numpy(np.stack([it["normal_image"] for it in items])),
             "caption": [it["caption"] for it in items], "normal_caption": [it["normal_caption"] for it in items],
             "name": [it["name"] for it in items]}
    assert all(batch["mask"][i].sum() > 0 for i in range(4))
    mixed = mix_batch(batch, normal_count(4, 0.5, 0))
    assert mixed["is_normal"].tolist() == [True, True, False, False]
    for i in range(2):  # normal rows: a normal training image, an empty anomaly map, the normal caption
        assert mixed["mask"][i].sum() == 0
        assert any(np.array_equal(mixed["image"][i].numpy(), n) for n in normal_pool)
        assert mixed["caption"][i] == "a photo of brick" and mixed["name"][i] == "brick+scratch"
    for i in range(2, 4):
        assert torch.equal(mixed["image"][i], batch["image"][i]) and mixed["caption"][i] == "Anomaly *"
    assert batch["mask"][0].sum() > 0  # the input batch is untouched
    with pytest.raises(UserError, match="normal_image"):
        mix_batch({k: v for k, v in batch.items() if k != "normal_image"}, 1)


# ----------------------------------------------------------------------------- NDI
@pytest.fixture(scope="module")
def eval_model(backbone_ckpt):
    return _model(backbone_ckpt).eval()


@pytest.mark.parametrize("name, steps, t_start", [("aias", 20, 499), ("ddim", 20, 499), ("ddpm", None, 20)])
def test_ndi_starts_at_the_requested_timestep_from_the_noised_normal_latent(eval_model, name, steps, t_start):
    m = eval_model
    g = torch.Generator().manual_seed(5)
    images = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    _, _, mask = _inputs()
    masks = mask[:, None]
    sampler = m.make_sampler(name, steps, t_start=t_start)
    full = m.make_sampler(name, steps, ndi=False)
    assert sampler.t_start == t_start and full.t_start is None
    assert sampler.nfe < full.nfe  # fewer network calls than from pure noise
    if name == "aias":
        assert sampler.nfe == 2 + 9  # ceil(18 · 500/1000) segments + 2 refinement steps
    calls = []
    hook = m.model.diffusion_model.register_forward_hook(lambda mod, a, out: calls.append((a[0].clone(), a[1])))
    try:
        out = m.generate(images, masks, ["Anomaly *"] * 2, [NAME] * 2, sampler, BatchRNG([11, 12]),
                         t_start=t_start)
    finally:
        hook.remove()
    assert len(calls) == sampler.nfe
    assert calls[0][1].tolist() == [t_start, t_start]
    z_bg = m.encode_to_latent(images)
    x_T = MaskGuidance(masks, z_bg, writeback="off").bind(m.schedule).prepare_x_T(
        tuple(z_bg.shape), BatchRNG([11, 12]), t_start=t_start)
    assert torch.equal(calls[0][0], x_T)
    assert torch.equal(out * (1 - masks), images * (1 - masks))  # exact paste outside the mask
    assert not torch.equal(out * masks, images * masks)
    if name == "aias":  # the model's default t_start is its ndi_t_start
        assert m.make_sampler("aias", 20).t_start == 500
        with pytest.raises(UserError, match="t_start"):
            m.generate(images, masks, ["Anomaly *"] * 2, [NAME] * 2, sampler, BatchRNG([1, 2]), t_start=300)


# ----------------------------------------------------------------------------- training step and artifacts
def _train_batch(b=4):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(b, 32, 32)
    mask[:, 8:24, 8:20] = 1
    return {"image": torch.rand(b, 32, 32, 3, generator=g) * 2 - 1, "mask": mask,
            "normal_image": torch.rand(b, 32, 32, 3, generator=g) * 2 - 1,
            "caption": ["Anomaly *"] * b, "normal_caption": ["a photo of tex"] * b, "name": [NAME] * b}


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_one_training_step_changes_only_the_new_parameters(backbone_ckpt, use_checkpoint):
    unet = {"target": UNET["target"], "params": dict(UNET["params"], use_checkpoint=use_checkpoint)}
    m = _model(backbone_ckpt, unet_config=unet)
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt = m.configure_optimizers()
    m.train()
    loss, logs = m.shared_step(_train_batch())
    loss.backward()
    gates = [f.alpha_attn for f in m.gsm]
    assert all(g.grad is not None and g.grad.abs() > 0 for g in gates)  # also through checkpointed blocks
    opt.step()
    changed = {k for k, v in m.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed and not {k for k in changed if k.startswith(BACKBONE)}
    assert {f"gsm.{i}.alpha_attn" for i in range(len(m.gsm))} <= changed
    assert any(k.startswith("lora.") and k.endswith("up.weight") for k in changed)
    assert any(k.startswith("embedding_manager.") for k in changed)
    trainable = {id(p) for p in m.trainable_parameters()}
    assert not any(id(p) in trainable for n, p in m.named_parameters() if n.startswith(BACKBONE))


def test_artifacts_export_reload_and_generate_contract(backbone_ckpt, tmp_path):
    m = _model(backbone_ckpt)
    opt = m.configure_optimizers()
    m.train()
    m.shared_step(_train_batch())[0].backward()
    opt.step()
    m.eval()
    paths = m.export_artifacts(tmp_path, 5)
    pt = [p for p in paths if p.suffix == ".pt"]  # (other tensor formats may be written beside them)
    assert sorted(p.name for p in pt) == ["embeddings.pt", "embeddings_gs-5.pt", "gsm-5.pt", "lora-5.pt", "scm-5.pt"]
    for p in pt:
        torch.load(p, weights_only=True)
    assert available_artifact_steps(tmp_path) == [5] == type(m).artifact_steps(tmp_path)
    fresh = _model(backbone_ckpt).eval()
    with pytest.raises(UserError, match=r"available: \[5\]"):
        fresh.load_artifacts(tmp_path, 6)
    fresh.load_artifacts(tmp_path, 5)
    assert torch.equal(*(_grounded_output(model) for model in (m, fresh)))
    other = _model(backbone_ckpt, names=[NAME])  # built for other names: refused, not silently fresh
    with pytest.raises(UserError, match="SCM anomaly tokens"):
        other.load_artifacts(tmp_path, 5)
    # generation's guidance options: FAST's farm_mode accepted, unknown keys refused
    mask = _inputs()[2]
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    s = m.make_sampler("ddim", 5)
    m.generate(images, mask[:, None], ["Anomaly *"] * 2, [NAME] * 2, s, BatchRNG([0, 1]),
               guidance_kw={"farm_mode": "input", "writeback": "window"})
    with pytest.raises(UserError, match="unknown guidance_kw"):
        m.generate(images, mask[:, None], ["Anomaly *"] * 2, [NAME] * 2, s, BatchRNG([0, 1]),
                   guidance_kw={"pasted": False})
    with pytest.raises(UserError, match="one of aias"):
        m.make_sampler("stage", 10)
    logs = m.log_images(_train_batch(2), N=2, ddim_steps=4)
    assert logs["samples"].shape == logs["inputs"].shape == (2, 3, 32, 32)


# ----------------------------------------------------------------------------- main.py with the shipped config
def test_main_trains_the_texture_demo_config(texture_data, tmp_path):
    ckpt = backbone_ckpt_from_config("configs/grounding/texture-demo.yaml", tmp_path / "ldm.ckpt")
    trainer, model = main_mod.run(["--base", "configs/grounding/texture-demo.yaml", "-t", "--actual_resume",
                                   str(tmp_path / "ldm.ckpt"), "--mvtec_path",
                                   str(texture_data / "brick" / "ground_truth" / "scratch") + "/", "--init_word",
                                   "scratch", "--max_steps", "2", "-l", str(tmp_path / "logs"), "-lf", "grounding",
                                   "data.params.batch_size=2", "data.params.train.params.repeats=1"])
    assert trainer.global_step == 2 and type(model).__name__ == "GroundingAnomaly"
    assert model.scm.names == ["brick+scratch"]
    ckdir = tmp_path / "logs" / "grounding" / "checkpoints"
    for name in ("embeddings_gs-2.pt", "scm-2.pt", "gsm-2.pt", "lora-2.pt", "last.ckpt"):
        assert (ckdir / name).is_file(), name
    sd = model.state_dict()
    for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items():
        if k.startswith(BACKBONE):
            assert torch.equal(sd[k].cpu(), v), k


# ----------------------------------------------------------------------------- ablation: binary mask map
@pytest.mark.parametrize("binary", [False, True])
def test_binary_map_does_not_tell_defect_types_apart(binary):
    names = ["tex+scratch", "tex+crack"]
    scm = SpatialConditioning(names, token_dim=6, context_dim=16, encoder="tiny", encoder_params={"widths": [4]},
                              grid=2, binary_map=binary)
    mask = torch.zeros(2, 12, 12)
    mask[:, 2:7, 3:9] = 1  # the same pixels, two defect types
    lab, products, anomalies = scm.labels_from_masks(mask, names)
    sem = scm.semantic_map(lab, products, anomalies)
    out = scm(lab, products, anomalies)
    assert torch.equal(sem[0], sem[1]) is binary and torch.equal(out[0], out[1]) is binary
    assert torch.equal(sem[0, :, 0, 0], scm.product_tokens["tex"].detach())  # the product token outside
    keys = set(scm.state_dict())
    if not binary:
        assert scm.mask_token is None and "mask_token" not in keys
        return
    assert torch.equal(sem[0, :, 4, 5], scm.mask_token.detach())  # one shared token inside every mask
    assert not any(k.startswith("anomaly_tokens.") for k in keys)
    out.sum().backward()
    assert scm.mask_token.grad.abs().sum() > 0
    with pytest.raises(UserError, match=r"no anomaly token for 'tex\+dent'"):  # names are still checked
        scm.semantic_map(lab, products, [["tex+dent"], ["tex+crack"]])
    # the shared token starts from the word every name shares
    assert scm.init_from_words(lambda w: torch.ones(6) if w == "defect" else None,
                               {n: "defect" for n in names}) == ["mask_token"]
    assert torch.equal(scm.mask_token.detach(), torch.ones(6))
    with pytest.raises(UserError, match="binary_map"):
        SpatialConditioning(names, token_dim=6, context_dim=16, binary_map="yes")


def test_binary_map_model_conditions_alike_and_refuses_other_artifacts(backbone_ckpt, tmp_path):
    _, _, mask = _inputs()
    both = ["tex+scratch", "tex+crack"]
    m = _model(backbone_ckpt, scm={"binary_map": True}).eval()
    semantic = _model(backbone_ckpt).eval()
    with torch.no_grad():
        semantic.scm.anomaly_tokens["tex+crack"].add_(0.5)  # both start from the init word; training parts them
        tokens = m.grounding_tokens(mask, both)
        assert torch.equal(tokens[0], tokens[1])
        tokens = semantic.grounding_tokens(mask, both)
        assert not torch.equal(tokens[0], tokens[1])
    assert "scm.mask_token" in m.state_dict() and not any(k.startswith("scm.anomaly_tokens.") for k in m.state_dict())
    m.export_artifacts(tmp_path, 3)
    fresh = _model(backbone_ckpt, scm={"binary_map": True})
    fresh.load_artifacts(tmp_path, 3)
    assert torch.equal(fresh.scm.mask_token, m.scm.mask_token)
    with pytest.raises(UserError, match="binary_map: true, this config sets binary_map: false"):
        semantic.load_artifacts(tmp_path, 3)


# ----------------------------------------------------------------------------- ablation: w/o GSM
@pytest.fixture(scope="module")
def no_gsm(backbone_ckpt):
    return _model(backbone_ckpt, gsm=False)


def _attn2_context_lengths(m, x, t, mask, captions):
    lengths = set()

    def hook(mod, args, kwargs):
        lengths.add(kwargs["context"].shape[1])

    handles = [b.attn2.register_forward_pre_hook(hook, with_kwargs=True)
               for _, b in transformer_blocks(m.model.diffusion_model)]
    try:
        out = _ours(m, x, t, mask, captions)
    finally:
        for h in handles:
            h.remove()
    return lengths, out


def test_without_gsm_the_scm_tokens_reach_the_cross_attention(backbone_ckpt, no_gsm):
    m = no_gsm.eval()
    with_gsm = _model(backbone_ckpt).eval()
    assert m.gsm is None and not any(k.startswith("gsm.") for k in m.state_dict())
    assert all(b.between_attention is None for _, b in transformer_blocks(m.model.diffusion_model))
    x, t, mask = _inputs()
    captions = ["a photo of tex"] * 2
    (text_len,), _ = _attn2_context_lengths(with_gsm, x, t, mask, captions)
    lengths, out = _attn2_context_lengths(m, x, t, mask, captions)
    assert lengths == {text_len + m.scm.n_tokens}
    other = torch.zeros_like(mask)
    other[:, 20:30, 20:30] = 1
    assert not torch.equal(_ours(m, x, t, other, captions), out)  # the map reaches the UNet without GSM
    with pytest.raises(UserError, match="config key 'gsm' .* must be true or false"):
        _model(backbone_ckpt, gsm="off")


def test_without_gsm_one_training_step_changes_only_the_trainable_parameters(no_gsm):
    m = no_gsm
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt = m.configure_optimizers()
    m.train()
    loss, logs = m.shared_step(_train_batch())
    loss.backward()
    opt.step()
    assert "train/gate_attn" not in logs
    trainable = {id(p) for p in m.trainable_parameters()}
    changed = {k for k, v in m.named_parameters() if not torch.equal(v.detach(), before[k])}
    assert changed and all(id(p) in trainable for k, p in m.named_parameters() if k in changed)
    assert any(k.startswith("scm.") for k in changed) and any(k.startswith("lora.") for k in changed)
    assert not any(k.startswith(BACKBONE) for k in changed)


def test_without_gsm_artifacts_round_trip_and_generate(backbone_ckpt, no_gsm, tmp_path):
    m = no_gsm.eval()
    paths = m.export_artifacts(tmp_path, 4)
    assert sorted(p.name for p in paths if p.suffix == ".pt") == ["embeddings.pt", "embeddings_gs-4.pt",
                                                                  "lora-4.pt", "scm-4.pt"]
    assert available_artifact_steps(tmp_path) == [4]
    fresh = _model(backbone_ckpt, gsm=False).eval()
    fresh.load_artifacts(tmp_path, 4)
    assert torch.equal(*(_grounded_output(model) for model in (m, fresh)))
    with pytest.raises(InputNotFound, match="gsm-4"):  # a GSM config needs the run's GSM weights
        _model(backbone_ckpt).load_artifacts(tmp_path, 4)
    _model(backbone_ckpt).export_artifacts(tmp_path, 6)
    with pytest.raises(UserError, match="gsm: false"):  # and GSM weights are never silently dropped
        fresh.load_artifacts(tmp_path, 6)
    mask = _inputs()[2]
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    out = m.generate(images, mask[:, None], ["Anomaly *"] * 2, [NAME] * 2, m.make_sampler("ddim", 3), BatchRNG([0, 1]))
    assert out.shape == images.shape and torch.isfinite(out).all()
    assert torch.equal(out * (1 - mask[:, None]), images * (1 - mask[:, None]))


# ----------------------------------------------------------------------------- ablation: w/o NDI
@pytest.mark.parametrize("name, steps, first", [("aias", 20, 999), ("ddim", 20, 951)])  # DDIM's grid tops at 951
def test_without_ndi_sampling_starts_from_pure_noise(eval_model, name, steps, first):
    m = eval_model
    sampler = m.make_sampler(name, steps, ndi=False)
    assert sampler.t_start is None and sampler.nfe == steps  # the full budget: AIAS steps are not scaled
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    _, _, mask = _inputs()
    masks = mask[:, None]
    calls = []
    hook = m.model.diffusion_model.register_forward_hook(lambda mod, a, out: calls.append((a[0].clone(), a[1])))
    try:
        m.generate(images, masks, ["Anomaly *"] * 2, [NAME] * 2, sampler, BatchRNG([11, 12]))
    finally:
        hook.remove()
    assert len(calls) == sampler.nfe
    assert calls[0][1].tolist() == [first, first]
    z_bg = m.encode_to_latent(images)
    x_T = MaskGuidance(masks, z_bg, writeback="off").bind(m.schedule).prepare_x_T(tuple(z_bg.shape),
                                                                                 BatchRNG([11, 12]))
    assert torch.equal(calls[0][0], x_T)  # pure noise, not the noised normal latent
    with pytest.raises(UserError, match="t_start=300"):
        m.make_sampler(name, steps, ndi=False, t_start=300)


def test_generate_cli_ndi_off_without_gsm(tmp_path, monkeypatch, backbone_ckpt):
    """``--ndi off`` through the CLI path on a w/o-GSM run: first call at T−1, recorded in the manifest."""
    data = make_dataset(tmp_path / "data")
    ckdir = make_run(tmp_path, data, names=("brick+scratch",),
                     config=lambda names: tiny_grounding_config(names=names, gsm=False))
    assert not list(ckdir.glob("gsm-*"))
    base = gen_args(data, ckdir, tmp_path / "out", "--steps", "3", "--n_samples", "1")
    with pytest.raises(UserError, match="--ndi off .* --t_start 300"):
        gen.main(base + ["--ndi", "off", "--t_start", "300"])
    opt = gen.options(base + ["--ndi", "off"])
    assert opt.ndi is False and gen.options(base).ndi is True
    run = load_run(opt, torch.device("cpu"))
    assert run.model.gsm is None
    calls = record_timesteps(run.model, monkeypatch)
    out = generate_pairs(opt, run=run, log=lambda *_: None)
    assert out["written"] == 1 and out["nfe"] == 3 and calls[0] == 999
    settings = json.loads((tmp_path / "out" / "brick" / "scratch" / "synthesis.json").read_text())
    assert settings["ndi"] is False and settings["t_start"] is None
    with pytest.raises(UserError, match=r"other settings \(.*\bndi\b"):
        gen.main(base)  # NDI on in the same folder: refused
    # a model without NDI refuses --ndi off rather than ignoring it
    with pytest.raises(UserError, match="LatentDiffusion has no NDI"):
        run_sampler(SimpleNamespace(model=backbone_ckpt[0]), opt)


# ----------------------------------------------------------------------------- mask textual inversion
def mask_config(names=("brick+scratch",)) -> dict:
    unet = {"target": UNET["target"],
            "params": dict(UNET["params"], image_size=16, in_channels=1, out_channels=1, model_channels=32,
                           num_heads=2, context_dim=8)}
    return {"base_learning_rate": 1e-3, "target": "ldm.models.diffusion.mask_ti.MaskDiffusion",
            "params": {"image_size": 16, "channels": 1, "timesteps": 1000, "linear_start": 0.00085,
                       "linear_end": 0.012, "monitor": None, "unet_config": unet,
                       "personalization_config": {"target": "ldm.models.diffusion.mask_ti.MaskTokens",
                                                  "params": {"names": list(names), "num_vectors_per_token": 2}}}}


def test_mask_ti_samples_binary_nonempty_and_different_masks(texture_data, tmp_path):
    ds = DefectMasksDataset(root=texture_data, category="brick", defect="scratch", size=32, anomaly_split="all")
    torch.manual_seed(0)
    model = instantiate_from_config(mask_config())
    model.learning_rate = 1e-3
    opt = model.configure_optimizers()
    model.train()
    tokens_before = model.tokens.string_to_param_dict["brick+scratch"].detach().clone()
    batch = {"mask": torch.from_numpy(np.stack([ds[i]["mask"] for i in range(4)])),
             "name": [ds[i]["name"] for i in range(4)]}
    model.shared_step(batch)[0].backward()
    opt.step()
    assert not torch.equal(model.tokens.string_to_param_dict["brick+scratch"], tokens_before)  # the token learns
    model.eval()
    model.export_artifacts(tmp_path, 1)
    fresh = instantiate_from_config(mask_config()).eval()
    fresh.load_artifacts(tmp_path, 1)
    source = GeneratedMasks(fresh, "brick+scratch", size=32, seed=3, steps=5)
    masks = [source.draw(i) for i in range(4)]
    for mk in masks:
        assert mk.shape == (32, 32) and mk.dtype == np.float32
        assert set(np.unique(mk).tolist()) <= {0.0, 1.0} and mk.sum() > 0
    assert len({mk.tobytes() for mk in masks}) == 4  # all different
    assert np.array_equal(source.draw(2), masks[2])  # mask n is a pure function of (seed, n)
    report = mask_diversity(masks, [ds.masks[0]])
    assert report["unique"] == 1.0 and 0.0 <= report["pairwise_iou_generated"] < 1.0
    with pytest.raises(UserError, match=r"no token for 'brick\+crack'"):
        GeneratedMasks(fresh, "brick+crack")


def test_mask_diversity_flags_copies():
    a = np.zeros((8, 8), np.float32)
    a[2:5, 2:5] = 1
    b = np.zeros((8, 8), np.float32)
    b[5:7, 1:7] = 1
    r = mask_diversity([a, a.copy()], [a])
    assert r["copies"] == 1.0 and r["unique"] == 0.5 and r["pairwise_iou_generated"] == 1.0
    r = mask_diversity([a, b], [a])
    assert r["copies"] == 0.5 and r["pairwise_iou_generated"] == 0.0 and r["nearest_real_iou"] == 0.5


def test_thin_masks_survive_the_resize_to_the_mask_model():
    """A 1-px scratch at 64 px covers under half of every 32-px cell: area resizing emptied it."""
    model = instantiate_from_config(mask_config())  # image_size 16
    mask = torch.zeros(1, 64, 64)
    mask[0, 5:60, 30] = 1.0                         # 1 px wide, 55 px long
    x = model.get_input({"mask": mask}, "mask")
    assert x.shape == (1, 1, 16, 16) and set(x.unique().tolist()) <= {-1.0, 1.0}
    assert int((x > 0).sum()) >= 13                 # the line is still there, every cell it crosses
    small = model.get_input({"mask": torch.ones(1, 8, 8)}, "mask")
    assert small.shape == (1, 1, 16, 16) and bool((small == 1).all())


@pytest.mark.parametrize("config", ["configs/grounding/masks-texture-demo.yaml", "configs/grounding/masks-mvtec.yaml"])
def test_mask_configs_reach_pure_noise_and_predict_the_mask(config):
    """Near-constant images (masks are ~99 % background) need x_T to be pure noise, or sampling from pure noise
    starts off the training distribution; at zero terminal SNR noise prediction cannot be inverted into a
    mask, so the model predicts the mask itself. With the LDM schedule and noise prediction half the
    demo's scratch masks came out all white."""
    from omegaconf import OmegaConf

    from ldm.models.diffusion.schedule import NoiseSchedule

    p = OmegaConf.load(ROOT / config).model.params
    assert p.parameterization == "x0"
    sched = NoiseSchedule.from_config(p.beta_schedule, p.timesteps, p.get("linear_start", 1e-4),
                                      p.get("linear_end", 2e-2), p.get("cosine_s", 8e-3))
    assert float(sched.alphas_cumprod[-1]) < 1e-4
