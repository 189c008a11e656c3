"""The slice of lucidrains' x-transformers that LDM's ``BERTEmbedder`` uses.

Only the module *names* matter for compatibility: the text2img-large checkpoint stores the text
encoder under ``cond_stage_model.transformer.{token_emb, pos_emb.emb, attn_layers.layers.N.M.*,
norm, to_logits}``, so this file reproduces exactly that tree (pre-norm encoder, 8 heads x 64,
q/k/v without bias, x4 GELU feed-forward) and nothing else. Attention is full and non-causal, as
in LDM, which never passes a padding mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AbsolutePositionalEmbedding", "Attention", "FeedForward", "Encoder", "TransformerWrapper"]


class AbsolutePositionalEmbedding(nn.Module):
    """Learned absolute positions; kept as a module so the key is ``pos_emb.emb.weight``."""

    def __init__(self, dim: int, max_seq_len: int):
        super().__init__()
        self.emb = nn.Embedding(max_seq_len, dim)
        nn.init.normal_(self.emb.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[1]
        if n > self.emb.num_embeddings:
            raise ValueError(f"sequence length {n} exceeds max_seq_len {self.emb.num_embeddings}")
        return self.emb(torch.arange(n, device=x.device))[None]


class Attention(nn.Module):
    """Multi-head self-attention on ``F.scaled_dot_product_attention`` (x-transformers names)."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.dropout = dropout
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (
            t(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)
            for t in (self.to_q, self.to_k, self.to_v)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=False
        )
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head))


class FeedForward(nn.Module):
    """``net = [[Linear, GELU], Dropout, Linear]`` so the keys are ``net.0.0.*`` and ``net.2.*``."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0):
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(
            nn.Sequential(nn.Linear(dim, inner), nn.GELU()),
            nn.Dropout(dropout),
            nn.Linear(inner, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Pre-norm encoder: ``layers[2i] = [LayerNorm, Attention]``, ``layers[2i+1] = [LayerNorm, FeedForward]``."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 8,
        dim_head: int = 64,
        ff_mult: int = 4,
        attn_dropout: float = 0.0,
        ff_dropout: float = 0.0,
    ):
        super().__init__()
        self.dim = dim
        self.depth = depth
        self.layers = nn.ModuleList()
        for _ in range(depth):
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), Attention(dim, heads, dim_head, attn_dropout)]))
            self.layers.append(nn.ModuleList([nn.LayerNorm(dim), FeedForward(dim, ff_mult, ff_dropout)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for norm, block in self.layers:
            x = x + block(norm(x))
        return x


class TransformerWrapper(nn.Module):
    """Token + absolute position embedding, an ``Encoder``, final LayerNorm and a logits head.

    The optional ``embedding_manager`` (textual inversion) rewrites the token embeddings before
    positions are added, which is where TI/AnomalyDiffusion/FAST hook in.
    """

    def __init__(
        self,
        num_tokens: int,
        max_seq_len: int,
        attn_layers: Encoder,
        emb_dim: int | None = None,
        emb_dropout: float = 0.0,
    ):
        super().__init__()
        dim = attn_layers.dim
        emb_dim = dim if emb_dim is None else emb_dim
        self.num_tokens = num_tokens
        self.max_seq_len = max_seq_len
        self.token_emb = nn.Embedding(num_tokens, emb_dim)
        nn.init.normal_(self.token_emb.weight, std=0.02)
        self.pos_emb = AbsolutePositionalEmbedding(emb_dim, max_seq_len)
        self.emb_dropout = nn.Dropout(emb_dropout)
        # x-transformers only adds a projection when the widths differ (no key otherwise).
        self.project_emb = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        self.attn_layers = attn_layers
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, num_tokens)

    def forward(
        self,
        x: torch.Tensor,
        return_embeddings: bool = False,
        embedding_manager=None,
        names=None,
    ) -> torch.Tensor:
        embedded = self.token_emb(x)
        if embedding_manager is not None:
            embedded = embedding_manager(x, embedded, names=names)
        h = embedded + self.pos_emb(embedded)
        h = self.emb_dropout(h)
        h = self.project_emb(h)
        h = self.attn_layers(h)
        h = self.norm(h)
        return h if return_embeddings else self.to_logits(h)
