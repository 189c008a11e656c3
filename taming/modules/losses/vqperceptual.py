"""GAN loss helpers shared by the first-stage losses (taming interface).

``LPIPS``, ``NLayerDiscriminator`` and ``weights_init`` are re-exported because LDM-era code does
``from taming.modules.losses.vqperceptual import *`` to get them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.losses.lpips import LPIPS

__all__ = ["adopt_weight", "hinge_d_loss", "vanilla_d_loss", "LPIPS", "NLayerDiscriminator", "weights_init"]


def adopt_weight(weight, global_step: int, threshold: int = 0, value: float = 0.0):
    """``value`` before ``threshold`` steps, ``weight`` afterwards (delays the GAN term)."""
    return value if global_step < threshold else weight


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    loss_real = torch.mean(F.relu(1.0 - logits_real))
    loss_fake = torch.mean(F.relu(1.0 + logits_fake))
    return 0.5 * (loss_real + loss_fake)


def vanilla_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.softplus(-logits_real)) + torch.mean(F.softplus(logits_fake)))
