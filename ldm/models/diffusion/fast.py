"""FAST: LatentDiffusion plus FARM (foreground-aware reconstruction) and a mask-conditioned adaptor.

Training step (paper Alg. 1 / official ``FAST.p_losses``)::

    x_t   = q(x0, t, ε)
    x̂0_an = FARM(x_t, M, t)                       # anomaly-only clean latent
    x̂_t   = (1 − M)·x_t + M·q(x̂0_an, t, ε)        # same ε
    ε̂     = adaptor(UNet(x̂_t, t, c), M)
    loss  = λ1·‖ε − ε̂‖² + λ2·‖x̂0_an − M⊙x0‖²      # λ1 = l_simple_weight = 2, λ2 = farm_loss_weight = 5

By default only the anomaly embeddings, FARM and the adaptor train; UNet, autoencoder and text encoder
stay frozen in eval mode (the official recipe on a pretrained backbone). ``unfreeze_model: true`` also
trains the UNet (small from-scratch backbones).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ldm.models.diffusion.adaptor import apply_adaptor, build_adaptor
from ldm.models.diffusion.masked import MaskedLatentDiffusion
from ldm.util import default, instantiate_from_config


class FAST(MaskedLatentDiffusion):
    # plain-tensor artifacts beside the checkpoints: FARM-{N}.pt, fine-{N}.pt (official names)
    ARTIFACT_MODULES = (("FARM", "FARM"), ("fine", "fine"))
    # make_guidance's options: FARM re-injection and MaskGuidance's write-back settings
    guidance_options = ("farm_mode", "farm", "writeback", "window", "mean_from")

    def __init__(self, farm_config=None, adaptor: str = "replace", adaptor_widths=(64, 128, 256, 256, 64),
                 farm_loss_weight: float = 5.0, mask_noise_loss: bool = False, *args, **kwargs):
        kwargs.setdefault("l_simple_weight", 2.0)
        super().__init__(*args, **kwargs)
        channels = self.channels
        farm_config = default(farm_config, {"target": "ldm.models.recon_net.FARM",
                                            "params": {"in_channels": channels, "out_channels": channels,
                                                       "latent_size": self.image_size}})
        self.FARM = instantiate_from_config(farm_config)
        self.adaptor_mode = adaptor
        self.fine = build_adaptor(adaptor, channels, tuple(adaptor_widths))
        self.farm_loss_weight = farm_loss_weight
        self.mask_noise_loss = mask_noise_loss
        self.load_pending_checkpoint()

    # ------------------------------------------------------------------ model pieces
    def apply_model(self, x_noisy, t, cond, return_ids: bool = False, mask: torch.Tensor | None = None):
        eps = super().apply_model(x_noisy, t, cond)
        return apply_adaptor(self.fine, self.adaptor_mode, eps, mask)

    def denoiser(self, cond=None, mask: torch.Tensor | None = None):
        def eps_fn(x, t):
            return self.apply_model(x, t, cond, mask=mask)
        return eps_fn

    def farm_fn(self):
        """``(x, mask, t) -> x̂0_an`` for the samplers' FARM re-injection."""
        return lambda x, mask, t: self.FARM(x, mask, t)

    # ------------------------------------------------------------------ training
    def p_losses(self, x_start, cond, t, noise=None, mask=None):
        """The FAST loss for latent mask ``mask`` (B×1×h×w, {0,1}; see ``latent_mask``)."""
        if mask is None:
            raise ValueError("FAST.p_losses needs the latent anomaly mask")
        noise = default(noise, lambda: self.training_noise(x_start))
        m = mask.to(device=x_start.device, dtype=x_start.dtype)
        x_t = self.q_sample(x_start, t, noise)
        x0_an = self.FARM(x_t, m, t)
        x_hat_t = (1.0 - m) * x_t + m * self.q_sample(x0_an, t, noise)
        eps_hat = self.apply_model(x_hat_t, t, cond, mask=m)
        weight = m.expand_as(eps_hat) if self.mask_noise_loss else None
        loss, loss_dict = self.loss_from_prediction(eps_hat, noise, t, weight_map=weight)
        prefix = "train" if self.training else "val"
        loss_farm = F.mse_loss(x0_an, m * x_start)
        loss_dict[f"{prefix}/loss_noise"] = loss.detach()
        loss_dict[f"{prefix}/loss_farm"] = loss_farm.detach()
        loss = loss + self.farm_loss_weight * loss_farm
        loss_dict[f"{prefix}/loss"] = loss
        return self.add_embedding_regulariser(loss, loss_dict)

    def hot_modules(self):
        return super().hot_modules() + [("FARM", self.FARM)]

    def trainable_parameters(self):
        params = super().trainable_parameters()
        params += list(self.FARM.parameters())
        if self.fine is not None:
            params += list(self.fine.parameters())
        return params

    # ------------------------------------------------------------------ generation
    def sampling_plan(self, cond, latent_mask: torch.Tensor, z_bg: torch.Tensor, **guidance_kw):
        """``(denoiser, guidance)`` for ``sampler.sample`` -- what ``generate`` runs, and what the
        benchmark times (it passes ``farm=`` to count FARM calls)."""
        return self.denoiser(cond, latent_mask), self.make_guidance(latent_mask, z_bg, **guidance_kw)

    def make_guidance(self, latent_mask: torch.Tensor, z_bg: torch.Tensor, farm_mode: str = "input",
                      farm=None, **kw):
        """FAST's mask guidance (FARM re-injection + background write-back), bound to the schedule.
        ``farm`` overrides the FARM callable (the benchmark wraps it to count calls)."""
        from ldm.models.diffusion.samplers.guidance import MaskGuidance

        if farm_mode != "off" and farm is None:
            farm = self.farm_fn()
        return MaskGuidance(latent_mask, z_bg=z_bg, farm=farm if farm_mode != "off" else None,
                            farm_mode=farm_mode, **kw).bind(self.schedule)


# the steps --weight_idx accepts (the class knows its artifact prefixes)
available_artifact_steps = FAST.artifact_steps
