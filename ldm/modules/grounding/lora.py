"""LoRA on the attention projections of a frozen UNet, added by forward hooks.

``y = W x (+ b) + (α / r) · B A x`` with A: in→r (Kaiming-uniform), B: r→out (zeros), so at
initialisation the output is the pretrained one exactly. The hooked ``nn.Linear`` keeps its own
parameters and names (``...attn1.to_q.weight``); the adapters live in a ``ModuleDict`` owned by the
model, keyed by the hooked module's path with ``.`` → ``__``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ldm.modules.attention import CrossAttention

DEFAULT_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")


class LoRA(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.rank = int(rank)
        self.scale = float(alpha if alpha is not None else rank) / self.rank
        self.down = nn.Linear(in_features, self.rank, bias=False)
        self.up = nn.Linear(self.rank, out_features, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(self.dropout(x.to(self.down.weight.dtype)))) * self.scale


class _AddLoRA:
    """Forward hook ``output + lora(input)`` (a plain object: it holds no parameters itself)."""

    def __init__(self, lora: LoRA):
        self.lora = lora

    def __call__(self, module, inputs, output):
        return output + self.lora(inputs[0]).to(output.dtype)


def lora_key(path: str) -> str:
    return path.replace(".", "__")


def install_lora(unet: nn.Module, rank: int, alpha: float | None = None, targets: Sequence[str] = ("attn1", "attn2"),
                 projections: Sequence[str] = DEFAULT_PROJECTIONS, dropout: float = 0.0):
    """LoRA adapters on ``projections`` of every ``CrossAttention`` whose attribute name is in ``targets``
    (``attn1`` self-attention, ``attn2`` cross-attention). Returns ``(ModuleDict, hook handles)``."""
    adapters = nn.ModuleDict()
    handles = []
    targets = tuple(targets)
    for name, module in unet.named_modules():
        if not isinstance(module, CrossAttention) or name.rsplit(".", 1)[-1] not in targets:
            continue
        for proj in projections:
            linear = module.get_submodule(proj)
            if not isinstance(linear, nn.Linear):
                raise ValueError(f"{name}.{proj} is a {type(linear).__name__}, not nn.Linear")
            lora = LoRA(linear.in_features, linear.out_features, rank, alpha, dropout)
            lora.to(device=linear.weight.device)
            adapters[lora_key(f"{name}.{proj}")] = lora
            handles.append(linear.register_forward_hook(_AddLoRA(lora)))
    if not adapters:
        raise ValueError(f"no attention projections matched LoRA targets {list(targets)}")
    return adapters, handles
