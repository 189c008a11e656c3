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

import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

from ldm.models.diffusion.adaptor import apply_adaptor, build_adaptor
from ldm.models.diffusion.ddpm import DDPM, LatentDiffusion
from ldm.util import default, instantiate_from_config
from utils.atomic import torch_save_atomic

def latent_mask(mask: torch.Tensor, size, threshold: float = 0.5) -> torch.Tensor:
    """Pixel mask (B×H×W or B×1×H×W, {0,1}) → binary latent mask B×1×h×w: bilinear resize, then
    threshold (what the official code does with ``transforms.Resize`` + ``> 0.5``)."""
    if mask.ndim == 3:
        mask = mask[:, None]
    mask = mask.float()
    if tuple(mask.shape[-2:]) != tuple(size):
        mask = F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)
    return (mask > threshold).float()


class FAST(LatentDiffusion):
    def __init__(self, farm_config=None, adaptor: str = "replace", adaptor_widths=(64, 128, 256, 256, 64),
                 farm_loss_weight: float = 5.0, mask_noise_loss: bool = False, mask_key: str = "mask",
                 mask_threshold: float = 0.5, *args, **kwargs):
        kwargs.setdefault("l_simple_weight", 2.0)
        kwargs.setdefault("parameterization", "eps")
        if kwargs["parameterization"] != "eps":
            raise ValueError("FAST needs parameterization 'eps' (FARM is re-noised with the training ε)")
        kwargs.setdefault("clip_denoised", False)
        ckpt_path = kwargs.pop("ckpt_path", None)
        ignore_keys = kwargs.pop("ignore_keys", [])
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
        self.mask_key = mask_key
        self.mask_threshold = mask_threshold
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys)
            self.restarted_from_ckpt = True

    # ------------------------------------------------------------------ model pieces
    def get_latent_mask(self, batch, size) -> torch.Tensor:
        if self.mask_key not in batch:
            raise KeyError(f"FAST needs the batch key '{self.mask_key}' (anomaly masks)")
        return latent_mask(batch[self.mask_key].to(self.device), size, self.mask_threshold)

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
    def shared_step(self, batch, **kwargs):
        z, c = self.get_input(batch, self.first_stage_key)
        return self(z, c, mask=self.get_latent_mask(batch, z.shape[-2:]))

    def p_losses(self, x_start, cond, t, noise=None, mask=None):
        """The FAST loss for latent mask ``mask`` (B×1×h×w, {0,1}; see ``latent_mask``)."""
        if mask is None:
            raise ValueError("FAST.p_losses needs the latent anomaly mask")
        noise = default(noise, lambda: torch.randn_like(x_start))
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

    def trainable_parameters(self):
        params = super().trainable_parameters()
        params += list(self.FARM.parameters())
        if self.fine is not None:
            params += list(self.fine.parameters())
        return params

    # ------------------------------------------------------------------ artifacts
    def export_artifacts(self, dirpath: str | os.PathLike, step: int) -> list[Path]:
        written = super().export_artifacts(dirpath, step)
        d = Path(dirpath)
        torch_save_atomic({k: v.detach().cpu() for k, v in self.FARM.state_dict().items()}, d / f"FARM-{step}.pt")
        written.append(d / f"FARM-{step}.pt")
        if self.fine is not None:
            torch_save_atomic({k: v.detach().cpu() for k, v in self.fine.state_dict().items()},
                              d / f"fine-{step}.pt")
            written.append(d / f"fine-{step}.pt")
        return written

    def load_artifacts(self, dirpath: str | os.PathLike, step: int) -> None:
        """Load ``embeddings_gs-{step}.pt``, ``FARM-{step}.pt`` and ``fine-{step}.pt`` (ours or the
        official pickled modules, read without executing code)."""
        from utils.safe_load import load_module_weights

        d = Path(dirpath)
        steps = available_artifact_steps(d)
        if step not in steps:
            raise ValueError(f"--weight_idx {step}: no artifacts for that step in {d}; available: "
                             f"{steps or 'none'}")
        if self.embedding_manager is not None:
            self.embedding_manager.load(d / f"embeddings_gs-{step}.pt")
        load_module_weights(self.FARM, d / f"FARM-{step}.pt")
        if self.fine is not None:
            fine = d / f"fine-{step}.pt"
            if not fine.is_file():
                raise FileNotFoundError(f"{fine} is missing but the config uses adaptor '{self.adaptor_mode}'")
            load_module_weights(self.fine, fine)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, images: torch.Tensor, masks: torch.Tensor, captions: list[str], names: list[str] | None,
                 sampler, rng, guidance_kw: dict | None = None, t_start: int | None = None) -> torch.Tensor:
        """Normal images (B×3×H×W, [-1,1]) + masks (B×1×H×W, {0,1}) → synthetic anomalous images.

        Pixels outside the mask are copied from the normal image exactly (final pixel-space paste).
        """
        from ldm.models.diffusion.samplers.guidance import MaskGuidance, paste

        images = images.to(self.device)
        masks = masks.to(self.device).float()
        z_bg = self.encode_to_latent(images)
        m = latent_mask(masks, z_bg.shape[-2:], self.mask_threshold)
        cond = {"caption": list(captions), "name": list(names)} if names is not None else list(captions)
        c = self.get_learned_conditioning(cond)
        kw = dict(guidance_kw or {})
        farm_mode = kw.pop("farm_mode", "input")
        guidance = MaskGuidance(m, z_bg=z_bg, farm=self.farm_fn() if farm_mode != "off" else None,
                                farm_mode=farm_mode, **kw).bind(self.schedule)
        x_T = None
        if t_start is not None:
            x_T = guidance.prepare_x_T(tuple(z_bg.shape), rng, t_start=t_start, device=z_bg.device,
                                       dtype=z_bg.dtype)
        z = sampler.sample(self.denoiser(c, m), tuple(z_bg.shape), rng=rng, guidance=guidance, x_T=x_T,
                           device=z_bg.device, dtype=z_bg.dtype)
        decoded = self.decode_first_stage(z).clamp(-1.0, 1.0)
        return paste(decoded, images, masks)

    @torch.no_grad()
    def log_images(self, batch, N: int = 8, sample: bool = True, ddim_steps: int = 20, **kwargs):
        """Inputs, masks and AIAS samples generated on the batch's own images and masks."""
        from ldm.models.diffusion.samplers import build_sampler
        from ldm.models.diffusion.samplers.rng import BatchRNG

        x = DDPM.get_input(self, batch, self.first_stage_key)[:N].to(self.device)
        masks = batch[self.mask_key][:N].to(self.device).float()
        log = {"inputs": x, "masks": masks[:, None].expand(-1, 3, -1, -1) * 2 - 1}
        if sample:
            raw = self.get_raw_conditioning(batch, bs=x.shape[0])
            captions = raw["caption"] if isinstance(raw, dict) else raw
            names = raw.get("name") if isinstance(raw, dict) else None
            sampler = build_sampler("aias", self.schedule, steps=ddim_steps)
            rng = BatchRNG(list(range(x.shape[0])))
            log["samples"] = self.generate(x, masks[:, None], captions, names, sampler, rng)
        return log


def available_artifact_steps(dirpath: str | os.PathLike) -> list[int]:
    """Steps for which ``FARM-{step}.pt`` exists (the unit of ``--weight_idx``)."""
    d = Path(dirpath)
    if not d.is_dir():
        return []
    steps = set()
    for p in d.iterdir():
        m = re.match(r"^FARM-(\d+)\.pt$", p.name)
        if m:
            steps.add(int(m.group(1)))
    return sorted(steps)
