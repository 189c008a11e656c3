"""The mask-conditioned adaptor on the UNet's noise prediction (the official FAST ``FineTune``).

A conv stack reads ``concat(ε̂, M)`` and outputs a new ε̂. Modes:

- ``replace`` (official): its output *is* the noise prediction;
- ``residual``: ``ε̂ + adaptor(ε̂, M)``, last conv zero-initialised so training starts from the UNet;
- ``off``: the UNet's ε̂ unchanged (FAST without adaptor, as in the paper).

STAGE's Mask Guidance Adapter (``MGA``) is the same design with wider layers (8→64→256→512→256→64)
and the official attribute name ``conv`` for its layer stack, so exported weights keep the official
``fine_image`` / ``fine_mask`` parameter names.
"""
from __future__ import annotations

import torch
from torch import nn

ADAPTOR_MODES = ("replace", "residual", "off")


def conv_stack(channels: int, widths, zero_init: bool = False) -> nn.Sequential:
    """Conv3×3 (BN + ReLU) layers of the given widths on ``2·channels`` inputs, then Conv1×1 → channels."""
    layers: list[nn.Module] = []
    cin = 2 * channels
    for w in widths:
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    layers.append(nn.Conv2d(cin, channels, 1))
    if zero_init:
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


def _mask_conditioned(stack: nn.Sequential, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(eps.dtype).expand(-1, eps.shape[1], -1, -1)
    return stack(torch.cat([eps, m], dim=1))


class FineTune(nn.Module):
    """Conv3×3 8→64→128→256→256→64 (BN + ReLU each), then Conv1×1 64→4 (≈1.11 M params at 4 channels)."""

    def __init__(self, channels: int = 4, widths=(64, 128, 256, 256, 64), zero_init: bool = False):
        super().__init__()
        self.net = conv_stack(channels, widths, zero_init)

    def forward(self, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _mask_conditioned(self.net, eps, mask)


class MGA(nn.Module):
    """STAGE Mask Guidance Adapter: Conv3×3 8→64→256→512→256→64 (BN + ReLU each), then Conv1×1 64→4
    (≈2.66 M params at 4 channels). Input ``concat(ε̂, mask)``; the mask may be soft (STAGE's M_t)."""

    def __init__(self, channels: int = 4, widths=(64, 256, 512, 256, 64), zero_init: bool = False):
        super().__init__()
        self.conv = conv_stack(channels, widths, zero_init)

    def forward(self, eps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return _mask_conditioned(self.conv, eps, mask)


def build_adaptor(mode: str, channels: int = 4, widths=(64, 128, 256, 256, 64), cls: type = FineTune):
    """The adaptor module for ``mode`` (``None`` when off); ``cls`` is ``FineTune`` (FAST) or ``MGA`` (STAGE).
    ``False`` is ``off``: YAML (and so ``model.params.adaptor=off`` on the command line) reads a bare off as false."""
    if mode is False:
        mode = "off"
    if mode not in ADAPTOR_MODES:
        raise ValueError(f"adaptor mode must be one of {ADAPTOR_MODES}, got '{mode}'")
    return None if mode == "off" else cls(channels, widths, zero_init=(mode == "residual"))


def apply_adaptor(fine: nn.Module | None, mode: str, eps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """ε̂ after the adaptor; identity when it is off or no mask is given."""
    if fine is None or mask is None:
        return eps
    out = fine(eps, mask)
    return eps + out if mode == "residual" else out
