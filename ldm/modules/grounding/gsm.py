"""GSM: gated self-attention (GLIGEN ``GatedSelfAttentionDense``) inserted into a frozen UNet.

Per ``BasicTransformerBlock``, between its self- and cross-attention::

    h = SelfAttn(LN([v, W·g]))[:, :N_v]           # visual tokens v attend over [v, conditioning tokens g]
    v = v + tanh(γ_attn) · h
    v = v + tanh(γ_ff) · FF(LN(v))                 # optional dense part (GLIGEN)

with γ initialised to 0: at initialisation the block is the pretrained one exactly.

The conditioning tokens travel through the UNet appended to the text context (``[text, g]`` along the
sequence axis), so nothing but ``context`` has to reach the blocks -- gradient checkpointing, which
re-runs a block from its inputs, sees them too. The hook splits them off again: the backbone's
cross-attention sees only the text tokens, the fuser only g.
"""
from __future__ import annotations

import torch
from torch import nn

from ldm.modules.attention import BasicTransformerBlock, CrossAttention, FeedForward


class GatedSelfAttention(nn.Module):
    def __init__(self, dim: int, context_dim: int, n_heads: int, d_head: int, feed_forward: bool = True):
        super().__init__()
        self.linear = nn.Linear(context_dim, dim)
        self.attn = CrossAttention(query_dim=dim, heads=n_heads, dim_head=d_head)
        self.norm1 = nn.LayerNorm(dim)
        self.alpha_attn = nn.Parameter(torch.zeros(()))
        if feed_forward:
            self.ff = FeedForward(dim, glu=True)
            self.norm2 = nn.LayerNorm(dim)
            self.alpha_dense = nn.Parameter(torch.zeros(()))
        else:
            self.ff = None

    def forward(self, x: torch.Tensor, objs: torch.Tensor) -> torch.Tensor:
        """``x``: B×N×dim visual tokens; ``objs``: B×M×context_dim conditioning tokens."""
        n = x.shape[1]
        g = self.linear(objs.to(x.dtype))
        h = self.attn(self.norm1(torch.cat([x, g], dim=1)))[:, :n]
        x = x + torch.tanh(self.alpha_attn).to(x.dtype) * h
        if self.ff is not None:
            x = x + torch.tanh(self.alpha_dense).to(x.dtype) * self.ff(self.norm2(x))
        return x


class _SplitAndFuse:
    """The block's ``between_attention``: a plain object (not an ``nn.Module``), so assigning it to
    the block registers nothing; it only refers to the fuser that lives in the model's ``gsm``."""

    def __init__(self, fuser: GatedSelfAttention, n_tokens: int):
        self.fuser = fuser
        self.n_tokens = int(n_tokens)

    def __call__(self, x: torch.Tensor, context):
        n = self.n_tokens
        if context is None or context.shape[1] <= n:
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"gated self-attention expects the text context followed by {n} conditioning "
                             f"tokens, got context {got}")
        text = context[:, :-n].contiguous()
        return self.fuser(x, context[:, -n:]), text


def transformer_blocks(unet: nn.Module) -> list[tuple[str, BasicTransformerBlock]]:
    return [(name, m) for name, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]


def install_gsm(unet: nn.Module, context_dim: int, n_tokens: int, feed_forward: bool = True) -> nn.ModuleList:
    """One ``GatedSelfAttention`` per transformer block of ``unet`` (in ``named_modules`` order), hooked
    in; returns them for the caller to own (and train)."""
    fusers = nn.ModuleList()
    blocks = transformer_blocks(unet)
    if not blocks:
        raise ValueError("the UNet has no spatial-transformer blocks to insert gated self-attention into "
                         "(use_spatial_transformer: true is needed)")
    for _, block in blocks:
        attn: CrossAttention = block.attn1
        fuser = GatedSelfAttention(attn.to_q.in_features, context_dim, attn.heads, attn.dim_head, feed_forward)
        fuser.to(device=attn.to_q.weight.device)
        block.between_attention = _SplitAndFuse(fuser, n_tokens)
        fusers.append(fuser)
    return fusers


def uninstall_gsm(unet: nn.Module) -> None:
    for _, block in transformer_blocks(unet):
        block.__dict__.pop("between_attention", None)
