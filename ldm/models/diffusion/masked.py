"""The shared base of the anomaly synthesizers (FAST, STAGE, GroundingAnomaly).

A latent diffusion model trained on (image, anomaly mask) batches over a pretrained, frozen backbone:
each method adds its own small modules (FARM and an adaptor; two MGAs; SCM, GSM and LoRA), exports
them as plain-tensor artifacts (``ArtifactsMixin``), and takes part in the generation contract that
``ldm/generation.py`` calls: ``make_sampler`` and ``generate`` live here, once; a subclass states its
differences through the hooks below and its own ``sampling_plan``.

Why a base: the backbone checkpoint must load *after* a subclass has created its modules (so its
keys are reported as missing, not silently skipped), the latent mask of a batch is computed the same
way everywhere (``latent_mask``: ``utils.mask_resize``'s area rule, thin parts kept continuous, never empty), and every model refuses a
sampler, a ``t_start`` or a guidance option it does not take with the same one-line ``UserError``.

Generation hooks (class attributes and methods a subclass may override):

- ``samplers``: the names ``make_sampler`` accepts (``ldm.models.diffusion.sampler_registry``; the
  first is the default); ``sampler_for``: how a name becomes a sampler (STAGE: its two-branch loop
  with the model's windows; GroundingAnomaly: the NDI start);
- ``guidance_options``: the ``guidance_kw`` keys ``generate`` takes, passed to ``sampling_plan``;
- ``paste``: whether pixels outside the mask are the normal image's (``pastes`` decides per call);
- ``generation_region`` / ``generation_conditioning``: the pixels to generate and the conditioning
  ``sampling_plan`` receives (GroundingAnomaly: multi-label masks, SCM tokens);
- ``check_generation_sampler``: the sampler objects the model's denoiser can drive.
"""
from __future__ import annotations

import torch

from ldm.models.diffusion.artifacts import ArtifactsMixin
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.models.diffusion.latent_mask import latent_mask
from ldm.models.diffusion.sampler_registry import ONE_BRANCH_SAMPLERS, build_sampler, check_ddpm_steps, check_sampler
from ldm.models.diffusion.samplers.guidance import PASTE_COLOURS, PASTE_DEFAULT, classifier_free, paste
from ldm.models.diffusion.samplers.stage import STAGESampler, parse_paste
from utils.errors import UserError


class MaskedLatentDiffusion(ArtifactsMixin, LatentDiffusion):
    samplers: tuple = ONE_BRANCH_SAMPLERS  # the names make_sampler accepts; the first is the default
    guidance_options: tuple = ()           # the guidance_kw keys generate passes to sampling_plan
    paste: bool = True                     # pixels outside the mask are the normal image's, exactly

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
        """Inputs, masks and samples generated on the batch's own images and masks (``generate`` with the
        model's default sampler)."""
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
            sampler = self.make_sampler(None, self.log_sampler_steps(ddim_steps))
            log["samples"] = self.generate(x, masks[:, None], captions, names, sampler,
                                           BatchRNG(list(range(x.shape[0]))))
        return log

    def shared_step(self, batch, **kwargs):
        z, c = self.get_input(batch, self.first_stage_key)
        return self(z, c, mask=self.get_latent_mask(batch, z.shape[-2:]))

    # ------------------------------------------------------------------ generation
    def make_sampler(self, name: str | None = None, steps: int | None = None, **opts):
        """The sampler to pass to ``generate``: ``name`` one of ``samplers`` (default the first), ``steps``
        its network calls (``ddpm`` runs every timestep: None or T), ``opts`` for ``sampler_for``."""
        name = check_sampler(type(self).__name__, self.samplers[0] if name is None else name, self.samplers)
        if name == "ddpm":
            check_ddpm_steps(steps, self.num_timesteps)
            steps = None
        return self.sampler_for(name, steps, opts)

    def sampler_for(self, name: str, steps: int | None, opts: dict):
        """The registry's sampler ``name`` over this model's schedule (``sampler_registry.build_sampler``)."""
        return build_sampler(name, self.schedule, steps=steps, **opts)

    def check_generation_sampler(self, sampler) -> None:
        """Refuse a sampler this model's denoiser cannot drive: a one-branch denoiser ``eps(x, t)`` runs
        every sampler but STAGE's two-branch loop."""
        if isinstance(sampler, STAGESampler):
            raise TypeError(f"{type(self).__name__}.generate needs a one-branch sampler "
                            f"({type(self).__name__}.make_sampler), got {type(sampler).__name__}")

    def pastes(self, sampler, guidance_kw: dict) -> bool:
        """Whether ``generate`` copies the normal image's pixels outside the mask: ``guidance_kw["paste"]``
        (taken out of the dict) when given, else the sampler's own ``paste`` option when it has one
        (STAGE's), else the model's ``paste``."""
        if "paste" in guidance_kw:
            choice = parse_paste(guidance_kw.pop("paste"))
            if choice is None:
                raise UserError(f"{type(self).__name__}.generate: guidance_kw paste must be true or false, got None")
            return choice
        choice = getattr(sampler, "paste", None)
        return self.paste if choice is None else choice

    def generation_region(self, masks: torch.Tensor) -> torch.Tensor:
        """The pixels to generate (B×1×H×W, 1 = generate): the masks as given."""
        return masks

    def generation_conditioning(self, captions: list, names, masks: torch.Tensor):
        """The conditioning ``sampling_plan`` receives: the encoded captions, with the per-name
        embeddings of ``names`` when given."""
        raw = {"caption": list(captions), "name": list(names)} if names is not None else list(captions)
        return self.get_learned_conditioning(raw)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, masks: torch.Tensor, captions: list[str], names: list | None,
                 sampler, rng, guidance_kw: dict | None = None, t_start: int | None = None,
                 guidance_scale: float = 1.0, negative_captions: list[str] | None = None,
                 paste_colour: str = PASTE_DEFAULT) -> torch.Tensor:
        """Normal images (B×3×H×W, [-1,1]) + masks (B×1×H×W or B×H×W, 1 = generate) → synthetic
        anomalous images (B×3×H×W, [-1,1])::

            R    = generation_region(masks),  c = generation_conditioning(captions, names, masks)
            z_bg = E(images),  M = latent_mask(R)
            z    = sampler.sample(*sampling_plan(c, M, z_bg, **guidance_kw))  # x_T: noise, or z_bg noised to t_start
            x    = clamp(D(z), −1, 1)
            out  = paste(x, images, R, paste_colour) when ``pastes``, else x   # x·R + images·(1 − R)

        ``sampling_plan(c, M, z_bg, **guidance_kw) -> (denoiser, guidance)`` is each subclass's own;
        ``sampler`` comes from ``make_sampler``; ``t_start``, when given, must be the sampler's own;
        ``guidance_kw`` takes the keys of ``guidance_options``. ``guidance_scale`` s ≠ 1 samples with
        classifier-free guidance against ``negative_captions`` (default ""): the plan's denoiser for c and
        for the negative captions, ε_u + s·(ε_c − ε_u) (``classifier_free``); the mask guidance is c's.
        ``paste_colour`` (``samplers.guidance.paste``): ``raw`` (default, the official composite) pastes the
        decoded region as it is, ``match`` first removes the decoded image's mean colour offset against the
        normal image.
        Every refusal comes before any network call.
        """
        name = type(self).__name__
        self.check_generation_sampler(sampler)
        if t_start is not None and getattr(sampler, "t_start", None) != int(t_start):
            raise UserError(f"t_start={t_start} but the sampler starts at {getattr(sampler, 't_start', None)}; "
                            "build the sampler with the same t_start")
        kw = dict(guidance_kw or {})
        unknown = sorted(set(kw) - set(self.guidance_options))
        if unknown:
            raise UserError(f"{name}.generate: unknown guidance_kw {unknown} "
                            f"(takes {', '.join(self.guidance_options)})")
        if paste_colour not in PASTE_COLOURS:
            raise UserError(f"{name}.generate: paste_colour must be one of {', '.join(PASTE_COLOURS)}, "
                            f"got {paste_colour!r}")
        if not guidance_scale >= 0:
            raise UserError(f"{name}.generate: guidance_scale must be >= 0, got {guidance_scale}")
        if negative_captions is not None and len(negative_captions) != len(captions):
            raise UserError(f"{name}.generate: {len(negative_captions)} negative captions for {len(captions)} captions")
        do_paste = self.pastes(sampler, kw)
        images = images.to(self.device)
        masks = masks.to(self.device).float()
        if masks.ndim == 3:
            masks = masks[:, None]
        region = self.generation_region(masks)
        cond = self.generation_conditioning(captions, names, masks)
        z_bg = self.encode_to_latent(images)
        m = latent_mask(region, z_bg.shape[-2:], self.mask_threshold)
        denoiser, guidance = self.sampling_plan(cond, m, z_bg, **kw)
        if guidance_scale != 1.0:
            negative = negative_captions if negative_captions is not None else [""] * len(captions)
            uncond = self.generation_conditioning(negative, names, masks)
            denoiser = classifier_free(denoiser, self.sampling_plan(uncond, m, z_bg, **kw)[0], guidance_scale)
        z = sampler.sample(denoiser, tuple(z_bg.shape), rng=rng, guidance=guidance,
                           device=z_bg.device, dtype=z_bg.dtype)
        decoded = self.decode_first_stage(z).clamp(-1.0, 1.0)
        return paste(decoded, images, region, paste_colour) if do_paste else decoded
