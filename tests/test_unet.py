"""The LDM UNet: checkpoint-compatible layout, trainability, attention numerics, determinism."""
from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from ldm.modules.attention import CrossAttention, SpatialTransformer
from ldm.modules.diffusionmodules.openaimodel import AttentionBlock, QKVAttention, UNetModel
from ldm.modules.diffusionmodules.util import checkpoint, normalization, timestep_embedding
from tests.reference_manifest import checkpoint_keys

PREFIX = "model.diffusion_model."

LARGE = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320,
             attention_resolutions=[4, 2, 1], num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8,
             use_spatial_transformer=True, transformer_depth=1, context_dim=1280, use_checkpoint=True,
             legacy=False)

TINY = dict(image_size=16, in_channels=4, out_channels=4, model_channels=32, attention_resolutions=[2],
            num_res_blocks=1, channel_mult=[1, 2], num_heads=4, use_spatial_transformer=True,
            context_dim=64, legacy=False)


def tiny_unet(**overrides) -> UNetModel:
    return UNetModel(**{**TINY, **overrides})


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Move zero-initialised layers off zero so every parameter gets a non-trivial gradient."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def tiny_inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    ctx = torch.randn(batch, 7, 64, generator=g)
    return x, t, ctx


# --- 1. checkpoint layout -------------------------------------------------------------------------

def test_large_config_state_dict_matches_ldm_checkpoint():
    ref = checkpoint_keys(group="unet", prefix=PREFIX)
    with torch.device("meta"):
        model = UNetModel(**LARGE)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert all(v.is_meta for v in model.state_dict().values())
    assert len(ref) == 686
    assert sorted(ours) == sorted(ref)
    assert ours == ref
    assert sum(p.numel() for p in model.parameters()) == 872_300_484


def test_large_config_accepts_omegaconf_lists():
    cfg = OmegaConf.create({"params": LARGE})
    with torch.device("meta"):
        model = UNetModel(**cfg.params)
    assert model.channel_mult == (1, 2, 4, 4)
    assert model.attention_resolutions == (4, 2, 1)
    # legacy False, 8 heads: dim_head = ch // 8 at every level
    st = model.input_blocks[7][1]
    assert isinstance(st, SpatialTransformer)
    attn = st.transformer_blocks[0].attn2
    assert (attn.heads, attn.dim_head) == (8, 160)


# --- 2. forward / backward on a tiny model ------------------------------------------------------------

def test_tiny_forward_backward_reaches_all_parameters():
    torch.manual_seed(0)
    model = tiny_unet()
    x, t, ctx = tiny_inputs()
    out = model(x, t, context=ctx)
    assert out.shape == x.shape
    torch.nn.functional.mse_loss(out, torch.randn_like(out)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    # at init the output conv is zero, so grads behind it vanish; the conv itself must still learn
    assert model.out[2].weight.grad.abs().sum() > 0


def test_perturbed_tiny_model_has_nonzero_grads_everywhere():
    torch.manual_seed(0)
    model = tiny_unet()
    perturb_(model)
    x, t, ctx = tiny_inputs()
    model(x, t, context=ctx).square().mean().backward()
    zero = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not zero, zero


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = tiny_unet(use_checkpoint=False)
    perturb_(plain)
    ckpt = tiny_unet(use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, ctx = tiny_inputs()

    # count recomputations to prove checkpointing is really active
    res = ckpt.input_blocks[1][0]
    calls = []
    original = res._forward
    res._forward = lambda *a: (calls.append(1), original(*a))[1]

    ctx_a = ctx.clone().requires_grad_(True)
    ctx_b = ctx.clone().requires_grad_(True)
    out_a = plain(x, t, context=ctx_a)
    out_b = ckpt(x, t, context=ctx_b)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    out_a.square().mean().backward()
    out_b.square().mean().backward()
    assert len(calls) == 2

    grads_b = dict(ckpt.named_parameters())
    for name, p in plain.named_parameters():
        torch.testing.assert_close(grads_b[name].grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(ctx_b.grad, ctx_a.grad, rtol=1e-5, atol=1e-7)


def test_checkpoint_helper_skips_under_no_grad():
    calls = []

    def f(a, b):
        calls.append(1)
        return a * b

    a = torch.randn(3)
    with torch.no_grad():
        out = checkpoint(f, (a, a), [], True)
    torch.testing.assert_close(out, a * a)
    assert len(calls) == 1


def test_classic_attention_variant_runs():
    """No text context: classic AttentionBlock, scale-shift norm, ResBlock up/down, class labels."""
    torch.manual_seed(0)
    model = UNetModel(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                      attention_resolutions=[2], channel_mult=[1, 2], num_head_channels=16,
                      use_scale_shift_norm=True, resblock_updown=True, num_classes=5,
                      use_new_attention_order=True)
    assert isinstance(model.middle_block[1], AttentionBlock)
    assert model.middle_block[1].num_heads == 4
    assert {"norm.weight", "qkv.weight", "proj_out.weight"} <= set(model.middle_block[1].state_dict())
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([3, 700]), y=torch.tensor([0, 4]))
    assert out.shape == (2, 6, 16, 16)
    with pytest.raises(ValueError):
        model(x, torch.tensor([3, 700]))


def test_codebook_head():
    torch.manual_seed(0)
    model = tiny_unet(n_embed=11)
    x, t, ctx = tiny_inputs()
    assert model(x, t, context=ctx).shape == (2, 11, 16, 16)


def test_spatial_transformer_without_context_self_attends():
    torch.manual_seed(0)
    st = SpatialTransformer(32, n_heads=2, d_head=16)
    assert st.transformer_blocks[0].attn2.to_k.in_features == 32
    perturb_(st)
    h = torch.randn(2, 32, 4, 4)
    out = st(h)
    assert out.shape == h.shape and not torch.equal(out, h)


# --- 3. attention numerics ------------------------------------------------------------------------

def naive_attention(q, k, v, scale, mask=None):
    sim = torch.einsum("bhid,bhjd->bhij", q, k) * scale
    if mask is not None:
        sim = sim.masked_fill(~mask[:, None, None, :], -torch.finfo(sim.dtype).max)
    return torch.einsum("bhij,bhjd->bhid", sim.softmax(dim=-1), v)


@pytest.mark.parametrize("with_context", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_cross_attention_matches_naive_softmax(with_context, with_mask):
    torch.manual_seed(0)
    heads, dim_head = 3, 8
    attn = CrossAttention(query_dim=20, context_dim=12 if with_context else None, heads=heads,
                          dim_head=dim_head).eval()
    x = torch.randn(2, 10, 20)
    ctx = torch.randn(2, 6, 12) if with_context else None
    src = x if ctx is None else ctx
    mask = None
    if with_mask:
        mask = torch.rand(2, src.shape[1]) > 0.4
        mask[:, 0] = True
    out = attn(x, context=ctx, mask=mask)

    def heads_of(t):
        return t.view(t.shape[0], t.shape[1], heads, dim_head).transpose(1, 2)

    q, k, v = heads_of(attn.to_q(x)), heads_of(attn.to_k(src)), heads_of(attn.to_v(src))
    ref = naive_attention(q, k, v, 1 / math.sqrt(dim_head), mask)
    ref = attn.to_out(ref.transpose(1, 2).reshape(2, 10, heads * dim_head))
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fully_masked_row_attends_uniformly():
    torch.manual_seed(0)
    attn = CrossAttention(query_dim=8, heads=2, dim_head=4).eval()
    x = torch.randn(1, 5, 8)
    out = attn(x, mask=torch.zeros(1, 5, dtype=torch.bool))
    v = attn.to_v(x).mean(dim=1, keepdim=True).expand(-1, 5, -1)
    torch.testing.assert_close(out, attn.to_out(v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("legacy", [True, False])
def test_qkv_attention_matches_naive(legacy):
    torch.manual_seed(0)
    bs, heads, ch, length = 2, 3, 8, 12
    qkv = torch.randn(bs, 3 * heads * ch, length)
    out = QKVAttention(heads, legacy=legacy)(qkv)
    if legacy:
        q, k, v = qkv.reshape(bs, heads, 3 * ch, length).split(ch, dim=2)
    else:
        q, k, v = (t.reshape(bs, heads, ch, length) for t in qkv.chunk(3, dim=1))
    ref = naive_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3), 1 / math.sqrt(ch))
    torch.testing.assert_close(out, ref.transpose(2, 3).reshape(bs, heads * ch, length),
                               rtol=1e-5, atol=1e-5)


# --- 4. determinism and small pieces --------------------------------------------------------------

def test_eval_forward_is_deterministic():
    torch.manual_seed(0)
    model = tiny_unet(dropout=0.1).eval()
    perturb_(model)
    x, t, ctx = tiny_inputs()
    with torch.no_grad():
        a = model(x, t, context=ctx)
        b = model(x, t, context=ctx)
    assert torch.equal(a, b)


def test_timestep_embedding_layout():
    t = torch.tensor([0, 5, 999])
    emb = timestep_embedding(t, 8)
    freqs = torch.exp(-math.log(10000) * torch.arange(4) / 4)
    args = t[:, None].float() * freqs
    torch.testing.assert_close(emb, torch.cat([args.cos(), args.sin()], dim=1))
    odd = timestep_embedding(t, 9)
    assert odd.shape == (3, 9) and torch.all(odd[:, -1] == 0)
    torch.testing.assert_close(timestep_embedding(t, 4, repeat_only=True), t[:, None].float().expand(3, 4))


def test_group_norm_computes_in_float32():
    norm = normalization(64)
    x = torch.randn(2, 64, 4, 4)
    out = norm(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm(x.to(torch.bfloat16).float()).to(torch.bfloat16).float())


def test_fp16_torso_close_to_fp32():
    torch.manual_seed(0)
    ref_model = tiny_unet()
    perturb_(ref_model)
    half_model = tiny_unet(use_fp16=True)
    half_model.load_state_dict(ref_model.state_dict())
    half_model.convert_to_fp16()
    x, t, ctx = tiny_inputs()
    with torch.no_grad():
        ref = ref_model(x, t, context=ctx)
        out = half_model(x, t, context=ctx)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
