"""Building blocks shared by the denoising UNet (names and numerics follow CompVis LDM).

Only layer factories and the timestep embedding live here; the UNet itself is in ``openaimodel.py``.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000,
                       repeat_only: bool = False) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t·f), sin(t·f)]`` of a 1-D batch of (possibly fractional) steps.

    Cosines come first, as in LDM, so pretrained ``time_embed`` weights line up. Odd ``dim`` gets a
    zero column at the end. ``repeat_only`` copies ``t`` into every column instead.
    """
    if repeat_only:
        return timesteps[:, None].float().expand(-1, dim).contiguous()
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero every parameter so a residual branch starts as the identity."""
    for p in module.parameters():
        p.detach().zero_()
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back, so half-precision activations stay stable."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The UNet's standard norm layer: 32 groups, float32 compute."""
    return GroupNorm32(32, channels)


_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D convolution."""
    if dims not in _CONVS:
        raise ValueError(f"unsupported dimensions: {dims} (expected 1, 2 or 3)")
    return _CONVS[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Module:
    return nn.Linear(*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1-, 2- or 3-D average pool."""
    if dims not in _POOLS:
        raise ValueError(f"unsupported dimensions: {dims} (expected 1, 2 or 3)")
    return _POOLS[dims](*args, **kwargs)


def checkpoint(func: Callable, inputs: Sequence, params: Iterable[torch.Tensor], flag: bool):
    """Run ``func(*inputs)``, recomputing activations in backward when ``flag`` is set.

    Non-reentrant checkpointing finds the parameters itself, so ``params`` is kept only for the
    CompVis call signature. Without grad there is nothing to save, so the plain call is used.
    """
    if flag and torch.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)
