"""Compact U-Net segmenter: DRAEM's discriminative sub-network idea, sized for a CPU.

Why: AnomalyDiffusion localises with DRAEM's ``DiscriminativeSubNetwork`` (base width 64, six
levels, tens of millions of parameters) -- far too slow to train on a CPU.  This net keeps the idea
(conv encoder, skip connections, 2-class logits at input resolution) but

* starts with a stride-2 stem (``stem_stride=2``, as real-time nets such as BiSeNet do), so the
  expensive blocks run at 1/2 resolution or below -- about 4× fewer FLOPs than a full-res U-Net;
* restores full-resolution detail with a light refinement conv on [upsampled features, input image],
  so thin defects (scratches, cracks) are not lost to the stem.

Defaults (base 16, depth 3) give ~0.5 M parameters; ``stem_stride=1`` makes it a plain U-Net.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cbr(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + BatchNorm + ReLU layers (DRAEM's encoder/decoder unit)."""

    def __init__(self, cin: int, cout: int):
        super().__init__(*_cbr(cin, cout), *_cbr(cout, cout))


class CompactUNet(nn.Module):
    """``B×C×H×W`` image in [-1, 1] → ``B×num_classes×H×W`` logits (any H, W; skips are resized)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2, base_channels: int = 16, depth: int = 3,
                 stem_stride: int = 2):
        super().__init__()
        if depth < 1 or base_channels < 1 or stem_stride not in (1, 2):
            raise ValueError(f"CompactUNet: need depth >= 1, base_channels >= 1, stem_stride 1 or 2; got "
                             f"{depth}, {base_channels}, {stem_stride}")
        widths = [base_channels * 2 ** i for i in range(depth + 1)]
        self.stem = nn.Sequential(*_cbr(in_channels, widths[0], stride=stem_stride), *_cbr(widths[0], widths[0]))
        self.encoders = nn.ModuleList([ConvBlock(widths[i], widths[i + 1]) for i in range(depth)])
        self.ups = nn.ModuleList([nn.Conv2d(widths[i + 1], widths[i], 1) for i in reversed(range(depth))])
        self.decoders = nn.ModuleList([ConvBlock(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.refine = nn.Sequential(*_cbr(widths[0] + in_channels, widths[0])) if stem_stride > 1 else nn.Identity()
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        skips = [h]
        for enc in self.encoders:
            h = enc(F.max_pool2d(h, 2, ceil_mode=True))
            skips.append(h)
        skips.pop()
        for up, dec in zip(self.ups, self.decoders):
            skip = skips.pop()
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = dec(torch.cat([up(h), skip], dim=1))
        if h.shape[-2:] != x.shape[-2:]:
            h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
            h = self.refine(torch.cat([h, x], dim=1))
        return self.head(h)
