"""The shared base of the anomaly synthesizers (FAST, STAGE, GroundingAnomaly).

A latent diffusion model trained on (image, anomaly mask) batches over a pretrained, frozen backbone:
each method adds its own small modules (FARM and an adaptor; two MGAs; SCM, GSM and LoRA), exports
them as plain-tensor artifacts (``ArtifactsMixin``), and implements the generation contract that
``ldm/generation.py`` calls: ``make_sampler``, ``sampling_plan`` and ``generate``.

Why a base: the backbone checkpoint must load *after* a subclass has created its modules (so its
keys are reported as missing, not silently skipped), and the latent mask of a batch is computed the
same way everywhere (``latent_mask``: bilinear resize, ``>= 0.5``, never empty).
"""
from __future__ import annotations

import torch

from ldm.models.diffusion.artifacts import ArtifactsMixin
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.models.diffusion.latent_mask import latent_mask
from utils.errors import UserError


class MaskedLatentDiffusion(ArtifactsMixin, LatentDiffusion):
    LOG_SAMPLER = "aias"  # the sampler of the training image grids (``log_images``)

    def log_sampler_steps(self, steps: int) -> int:
        """Network calls for the training image grids (a subclass may need a minimum)."""
        return int(steps)

    def __init__(self, *args, mask_key: str = "mask", mask_threshold: float = 0.5, **kwargs):
        kwargs.setdefault("parameterization", "eps")
        if kwargs["parameterization"] != "eps":
            raise UserError(f"{type(self).__name__} needs parameterization 'eps' (its losses and samplers "
                            "work on the noise prediction)")
        self._pending_ckpt = (kwargs.pop("ckpt_path", None), kwargs.pop("ignore_keys", []))
        super().__init__(*args, **kwargs)
        self.mask_key = mask_key
        self.mask_threshold = float(mask_threshold)

    def load_pending_checkpoint(self) -> None:
        """Load the backbone checkpoint; subclasses call this last in ``__init__``."""
        path, ignore = self._pending_ckpt
        if path is not None:
            self.init_from_ckpt(path, ignore)
            self.restarted_from_ckpt = True

    def get_latent_mask(self, batch, size) -> torch.Tensor:
        if self.mask_key not in batch:
            raise KeyError(f"{type(self).__name__} needs the batch key '{self.mask_key}' (anomaly masks)")
        return latent_mask(batch[self.mask_key].to(self.device), size, self.mask_threshold)

    @torch.no_grad()
    def log_images(self, batch, N: int = 8, sample: bool = True, ddim_steps: int = 20, **kwargs):
        """Inputs, masks and samples generated on the batch's own images and masks (``generate``)."""
        from ldm.models.diffusion.ddpm import DDPM
        from ldm.models.diffusion.samplers.rng import BatchRNG

        x = DDPM.get_input(self, batch, self.first_stage_key)[:N].to(self.device)
        masks = batch[self.mask_key][:N].to(self.device).float()
        if masks.ndim == 4:
            masks = masks[:, 0]
        log = {"inputs": x, "masks": masks[:, None].expand(-1, 3, -1, -1) * 2 - 1}
        if sample:
            raw = self.get_raw_conditioning(batch, bs=x.shape[0])
            captions = raw["caption"] if isinstance(raw, dict) else raw
            names = list(batch[self.name_key])[:x.shape[0]] if self.name_key in batch else None
            sampler = self.make_sampler(self.LOG_SAMPLER, self.log_sampler_steps(ddim_steps))
            log["samples"] = self.generate(x, masks[:, None], captions, names, sampler,
                                           BatchRNG(list(range(x.shape[0]))))
        return log

    def shared_step(self, batch, **kwargs):
        z, c = self.get_input(batch, self.first_stage_key)
        return self(z, c, mask=self.get_latent_mask(batch, z.shape[-2:]))
