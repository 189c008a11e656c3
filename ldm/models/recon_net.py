"""FARM — the Foreground-Aware Reconstruction Module of FAST.

FARM looks at a noisy latent ``x_t`` and rebuilds the *anomaly-only* clean latent ``M ⊙ x0``: an
encoder without skip connections squeezes ``x_t`` to a bottleneck at 1/4 of the latent size; a
background-adaptive soft mask ``M̃ = M_d + (1 − M_d)·σ(f_bg(τ_t))`` keeps the anomaly features and
lets a learned, time-dependent fraction of the background through; a time embedding is added; a
decoder upsamples twice, concatenating the binary mask at every resolution.

Parameter names follow the official ``ldm.models.recon_net.FARM`` so its exported weights load by
name. Unlike the official module (fixed 8×8 bottleneck) the soft-mask MLP output is resized when
the latent is not 32×32, so other latent sizes work too.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_table(num_steps: int, dim: int) -> torch.Tensor:
    """``[num_steps, dim]`` table with sin at even and cos at odd columns (the official layout)."""
    if dim % 2:
        raise ValueError(f"time embedding dim must be even, got {dim}")
    pos = torch.arange(num_steps, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_steps, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)
    return table


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class EncoderReconstructive(nn.Module):
    """Three stages (full, 1/2, 1/4 resolution), widths w, 2w, 4w; no skip connections."""

    def __init__(self, in_channels: int, base_width: int):
        super().__init__()
        w = base_width
        self.block1 = nn.Sequential(*_conv_bn_relu(in_channels, w), *_conv_bn_relu(w, w))
        self.mp1 = nn.MaxPool2d(2)
        self.block2 = nn.Sequential(*_conv_bn_relu(w, 2 * w), *_conv_bn_relu(2 * w, 2 * w))
        self.mp2 = nn.MaxPool2d(2)
        self.block3 = nn.Sequential(*_conv_bn_relu(2 * w, 4 * w), *_conv_bn_relu(4 * w, 4 * w),
                                    nn.Conv2d(4 * w, 4 * w, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block3(self.mp2(self.block2(self.mp1(self.block1(x)))))


class DecoderReconstructive(nn.Module):
    """Bottleneck → ×2 → ×2, with the binary mask concatenated at each resolution."""

    def __init__(self, base_width: int, out_channels: int):
        super().__init__()
        w = base_width
        self.f_conv = nn.Conv2d(4 * w, 4 * w, 1)
        self.conv1 = nn.Sequential(*_conv_bn_relu(4 * w + 1, 2 * w))
        self.conv2 = nn.Sequential(*_conv_bn_relu(2 * w + 1, w))
        self.final_conv = nn.Conv2d(w + 1, out_channels, 3, padding=1)

    @staticmethod
    def _with_mask(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, F.interpolate(mask, size=x.shape[-2:], mode="nearest")], dim=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, out_size: tuple[int, int]) -> torch.Tensor:
        x = self.f_conv(x)
        mid = (out_size[0] // 2, out_size[1] // 2)
        x = F.interpolate(x, size=mid, mode="bilinear", align_corners=True)
        x = self.conv1(self._with_mask(x, mask))
        x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=True)
        x = self.conv2(self._with_mask(x, mask))
        return self.final_conv(self._with_mask(x, mask))


class FARM(nn.Module):
    def __init__(self, in_channels: int = 4, out_channels: int = 4, base_width: int = 64, t_emb_dim: int = 128,
                 max_timesteps: int = 1000, latent_size: int = 32, bg_hidden: int = 256):
        super().__init__()
        if latent_size % 4:
            raise ValueError(f"FARM latent_size must be divisible by 4, got {latent_size}")
        self.bottleneck = latent_size // 4
        self.encoder = EncoderReconstructive(in_channels, base_width)
        self.decoder = DecoderReconstructive(base_width, out_channels)
        self.time_embedding = nn.Embedding(max_timesteps, t_emb_dim)
        with torch.no_grad():
            self.time_embedding.weight.copy_(sinusoidal_table(max_timesteps, t_emb_dim))
        self.t_proj = nn.Linear(t_emb_dim, 4 * base_width)
        self.bg_weight_map_mlp = nn.Sequential(nn.Linear(t_emb_dim, bg_hidden), nn.ReLU(inplace=True),
                                               nn.Linear(bg_hidden, self.bottleneck ** 2))

    def soft_mask(self, mask: torch.Tensor, t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``M̃ = M_d + (1 − M_d)·σ(f_bg(τ_t))`` at the bottleneck resolution: 1 inside the mask."""
        t_emb = self.time_embedding(t)
        bg = torch.sigmoid(self.bg_weight_map_mlp(t_emb)).view(-1, 1, self.bottleneck, self.bottleneck)
        if bg.shape[-2:] != size:
            bg = F.interpolate(bg, size=size, mode="bilinear", align_corners=False)
        m_d = F.interpolate(mask, size=size, mode="nearest")
        return m_d + (1.0 - m_d) * bg

    def forward(self, x: torch.Tensor, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x: B×C×h×w noisy latent; mask: B×1×h×w binary (1 = anomaly); t: B long → x̂0 of the anomaly."""
        if mask.ndim == 3:
            mask = mask[:, None]
        mask = mask.to(x.dtype)
        h = self.encoder(x)
        h = h * self.soft_mask(mask, t, h.shape[-2:])
        h = h + self.t_proj(self.time_embedding(t))[:, :, None, None]
        return self.decoder(h, mask, x.shape[-2:])
