"""First-stage (KL autoencoder) training losses.

Both classes share the call ``loss(inputs, reconstructions, posteriors, optimizer_idx, global_step,
last_layer=None, cond=None, split="train", weights=None) -> (loss, log_dict)`` and expose
``has_discriminator`` so ``AutoencoderKL`` knows whether to build a second optimizer.
``global_step`` counts training batches (not optimizer steps).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from taming.modules.discriminator.model import NLayerDiscriminator, weights_init
from taming.modules.losses.lpips import LPIPS
from taming.modules.losses.vqperceptual import adopt_weight, hinge_d_loss, vanilla_d_loss


def _kl_per_sample(posteriors) -> torch.Tensor:
    kl = posteriors.kl()
    return torch.sum(kl) / kl.shape[0]


class KLReconstructionLoss(nn.Module):
    """L1 reconstruction + weighted KL, no discriminator and no perceptual net (cheap CPU configs).

    Both terms are summed per sample and averaged over the batch, the scaling of
    ``LPIPSWithDiscriminator``, so the usual ``kl_weight`` values (e.g. 1e-6) carry over.
    """

    has_discriminator = False

    def __init__(self, kl_weight: float = 1.0, pixelloss_weight: float = 1.0):
        super().__init__()
        self.kl_weight = kl_weight
        self.pixel_weight = pixelloss_weight

    def forward(self, inputs, reconstructions, posteriors, optimizer_idx, global_step,
                last_layer=None, cond=None, split="train", weights=None):
        if optimizer_idx != 0:
            raise ValueError(f"KLReconstructionLoss has no discriminator (optimizer_idx={optimizer_idx})")
        rec = torch.abs(inputs.contiguous() - reconstructions.contiguous())
        if weights is not None:
            rec = weights * rec
        rec_loss = self.pixel_weight * torch.sum(rec) / rec.shape[0]
        kl_loss = _kl_per_sample(posteriors)
        loss = rec_loss + self.kl_weight * kl_loss
        log = {
            f"{split}/total_loss": loss.detach().clone().mean(),
            f"{split}/kl_loss": kl_loss.detach().mean(),
            f"{split}/rec_loss": torch.abs(inputs - reconstructions).detach().mean(),
            f"{split}/nll_loss": rec_loss.detach().mean(),
        }
        return loss, log


class LPIPSWithDiscriminator(nn.Module):
    """CompVis KL-autoencoder loss: L1 (+ LPIPS) NLL with a learned scalar ``logvar``, KL, and a
    PatchGAN term whose weight is balanced adaptively against the NLL at the decoder's last layer.

    The perceptual term exists only when ``perceptual_weight > 0`` and then needs local VGG16
    weights (``vgg_weights``; ``lin_weights`` optional), because nothing is downloaded.
    """

    has_discriminator = True

    def __init__(self, disc_start: int, logvar_init: float = 0.0, kl_weight: float = 1.0,
                 pixelloss_weight: float = 1.0, disc_num_layers: int = 3, disc_in_channels: int = 3,
                 disc_factor: float = 1.0, disc_weight: float = 1.0, perceptual_weight: float = 1.0,
                 use_actnorm: bool = False, disc_conditional: bool = False, disc_loss: str = "hinge",
                 vgg_weights: Optional[str] = None, lin_weights: Optional[str] = None):
        super().__init__()
        if disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got '{disc_loss}'")
        if perceptual_weight > 0 and vgg_weights is None:
            raise ValueError("LPIPSWithDiscriminator: perceptual_weight > 0 needs user-supplied VGG16 "
                             "weights (vgg_weights=<local file>); nothing is downloaded - set "
                             "perceptual_weight: 0 otherwise")
        self.kl_weight = kl_weight
        self.pixel_weight = pixelloss_weight
        self.perceptual_weight = perceptual_weight
        if perceptual_weight > 0:
            self.perceptual_loss = LPIPS(vgg_weights=vgg_weights, lin_weights=lin_weights).eval()
        # Learned output log-variance; CompVis keeps it outside the autoencoder's optimizer.
        self.logvar = nn.Parameter(torch.ones(size=()) * logvar_init)

        self.discriminator = NLayerDiscriminator(input_nc=disc_in_channels, n_layers=disc_num_layers,
                                                 use_actnorm=use_actnorm).apply(weights_init)
        self.discriminator_iter_start = disc_start
        self.disc_loss = hinge_d_loss if disc_loss == "hinge" else vanilla_d_loss
        self.disc_factor = disc_factor
        self.discriminator_weight = disc_weight
        self.disc_conditional = disc_conditional

    def calculate_adaptive_weight(self, nll_loss, g_loss, last_layer) -> torch.Tensor:
        """‖∇NLL‖ / ‖∇G‖ at ``last_layer``, clamped to [0, 1e4], times ``disc_weight``."""
        nll_grads = torch.autograd.grad(nll_loss, last_layer, retain_graph=True)[0]
        g_grads = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
        d_weight = torch.norm(nll_grads) / (torch.norm(g_grads) + 1e-4)
        d_weight = torch.clamp(d_weight, 0.0, 1e4).detach()
        return d_weight * self.discriminator_weight

    def _can_balance(self, nll_loss, g_loss, last_layer) -> bool:
        # Outside autograd (validation) the gradients do not exist: CompVis then uses weight 0.
        return (last_layer is not None and torch.is_grad_enabled() and last_layer.requires_grad
                and nll_loss.requires_grad and g_loss.requires_grad)

    def _disc_input(self, x, cond):
        if cond is None:
            if self.disc_conditional:
                raise ValueError("disc_conditional=True needs a cond tensor")
            return x.contiguous()
        if not self.disc_conditional:
            raise ValueError("cond given but disc_conditional=False")
        return torch.cat((x.contiguous(), cond), dim=1)

    def forward(self, inputs, reconstructions, posteriors, optimizer_idx, global_step,
                last_layer=None, cond=None, split="train", weights=None):
        rec_loss = torch.abs(inputs.contiguous() - reconstructions.contiguous())
        if self.perceptual_weight > 0:
            p_loss = self.perceptual_loss(inputs.contiguous(), reconstructions.contiguous())
            rec_loss = rec_loss + self.perceptual_weight * p_loss

        nll_loss = rec_loss / torch.exp(self.logvar) + self.logvar
        weighted_nll_loss = nll_loss if weights is None else weights * nll_loss
        weighted_nll_loss = torch.sum(weighted_nll_loss) / weighted_nll_loss.shape[0]
        nll_loss = torch.sum(nll_loss) / nll_loss.shape[0]
        kl_loss = _kl_per_sample(posteriors)

        if optimizer_idx == 0:
            # Generator update: fool the discriminator.
            logits_fake = self.discriminator(self._disc_input(reconstructions, cond))
            g_loss = -torch.mean(logits_fake)
            if self.disc_factor > 0.0 and self._can_balance(nll_loss, g_loss, last_layer):
                d_weight = self.calculate_adaptive_weight(nll_loss, g_loss, last_layer)
            else:
                d_weight = torch.tensor(0.0, device=inputs.device)
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
            loss = weighted_nll_loss + self.kl_weight * kl_loss + d_weight * disc_factor * g_loss
            log = {
                f"{split}/total_loss": loss.detach().clone().mean(),
                f"{split}/logvar": self.logvar.detach(),
                f"{split}/kl_loss": kl_loss.detach().mean(),
                f"{split}/nll_loss": nll_loss.detach().mean(),
                f"{split}/rec_loss": rec_loss.detach().mean(),
                f"{split}/d_weight": d_weight.detach(),
                f"{split}/disc_factor": torch.tensor(float(disc_factor), device=inputs.device),
                f"{split}/g_loss": g_loss.detach().mean(),
            }
            return loss, log

        if optimizer_idx == 1:
            # Discriminator update: the autoencoder output is a constant here.
            logits_real = self.discriminator(self._disc_input(inputs.detach(), cond))
            logits_fake = self.discriminator(self._disc_input(reconstructions.detach(), cond))
            disc_factor = adopt_weight(self.disc_factor, global_step, threshold=self.discriminator_iter_start)
            d_loss = disc_factor * self.disc_loss(logits_real, logits_fake)
            log = {
                f"{split}/disc_loss": d_loss.detach().clone().mean(),
                f"{split}/logits_real": logits_real.detach().mean(),
                f"{split}/logits_fake": logits_fake.detach().mean(),
            }
            return d_loss, log

        raise ValueError(f"optimizer_idx must be 0 or 1, got {optimizer_idx}")
