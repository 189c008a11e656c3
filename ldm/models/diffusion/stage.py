"""STAGE: LatentDiffusion with two mask-guidance adapters (docs/method.md §3, "STAGE"; official ``Chhro123/STAGE``).

Training step (official ``p_losses``), with M the binary latent mask and t, ε, ε' drawn per sample::

    M_t    = α_t·(1 − M) + M,  α_t = clip((t − 200)/800, 0, 1)      # explicit mask alignment
    x_t    = q(x0, t, ε)                                           # anomaly-aware branch input
    m_t    = q(M ⊙ x0, t, ε')                                      # anomaly-only branch input (ε' independent)
    ε̂_img  = MGA_image(UNet(x_t, t, c), M_t)
    ε̂_mask = MGA_mask(UNet(m_t, t, c), M)
    loss   = λ_img·mean|M_t ⊙ (ε − ε̂_img)| + λ_mask·mean|ε' − ε̂_mask|
                                                   # λ_img = l_simple_weight = 4, λ_mask = mask_loss_weight = 1

The defaults are the official fork's: ``loss_type: l1`` (absolute values, as above) and
``l_simple_weight: 4``. ``loss_type: l2`` squares both terms instead (the project's default before it
followed the official code). Each term also carries the CompVis ``logvar`` / ELBO bookkeeping, as in the
official code; with ``logvar = 0`` and ``original_elbo_weight = 0`` (the defaults) the loss is exactly
the line above.

Only the anomaly embeddings and both adapters train; UNet, autoencoder and text encoder are frozen.
Sampling is the two-branch loop of :mod:`ldm.models.diffusion.samplers.stage`: ``make_sampler("ddpm")``
is the official loop (1000 ancestral DDPM steps, anomaly-only branch for 700 ≤ t ≤ 800 and 300 ≤ t ≤ 400);
``make_sampler("stage", K)`` is the project's accelerated variant (K exact closed-form segments).

Output: as the official code, ``generate`` returns the decoded image (``paste: false``): pixels outside
the mask are the autoencoder's rendering of the sampled latent, not the normal image's pixels, and
``pairs.csv`` reports their error (``background_error``). ``paste: true`` in the config, the sampler
option ``make_sampler(..., paste=True)`` or ``guidance_kw={"paste": True}`` copies the normal image's
pixels outside the mask exactly (the project's default before). Artifacts: ``embeddings_gs-{N}.pt``,
``fine_image-{N}.pt``, ``fine_mask-{N}.pt`` (the official file names, here plain state dicts).
"""
from __future__ import annotations

import torch

from ldm.models.diffusion.adaptor import MGA, apply_adaptor, build_adaptor
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.models.diffusion.masked import MaskedLatentDiffusion
from ldm.models.diffusion.sampler_registry import build_sampler
from ldm.models.diffusion.samplers.stage import OFFICIAL_WINDOWS, STAGESampler, explicit_mask, parse_paste
from ldm.util import default
from utils.errors import UserError

# FAST's guidance options (FARM re-injection, windowed write-back): accepted so one generation call
# serves both models, and ignored -- STAGE's background handling is part of its sampler.
FAST_ONLY_GUIDANCE = ("farm_mode", "writeback")


class STAGE(MaskedLatentDiffusion):
    ARTIFACT_MODULES = (("fine_image", "fine_image"), ("fine_mask", "fine_mask"))
    samplers = ("stage", "ddpm")  # its two-branch loop: K segments, or every timestep (the official one)
    guidance_options = ("paste",) + FAST_ONLY_GUIDANCE

    def __init__(self, adaptor: str = "replace", adaptor_widths=(64, 256, 512, 256, 64),
                 mask_loss_weight: float = 1.0, mask_schedule: str = "linear", shrink_end: int = 200,
                 windows=OFFICIAL_WINDOWS, paste: bool = False, *args, **kwargs):
        kwargs.setdefault("l_simple_weight", 4.0)  # λ_img of the official fork
        kwargs.setdefault("loss_type", "l1")       # the official fork's DDPM default (l2: squared errors)
        super().__init__(*args, **kwargs)
        if adaptor == "off":
            raise UserError("STAGE adaptor must be 'replace' (official) or 'residual'; "
                            "with 'off' the two branches would be the same network")
        self.adaptor_mode = adaptor
        widths = tuple(adaptor_widths)
        self.fine_image = build_adaptor(adaptor, self.channels, widths, cls=MGA)
        self.fine_mask = build_adaptor(adaptor, self.channels, widths, cls=MGA)
        self.mask_loss_weight = float(mask_loss_weight)
        self.mask_schedule = mask_schedule
        self.shrink_end = int(shrink_end)
        explicit_mask(torch.zeros(1, 1, 1, 1), 0, self.num_timesteps, self.shrink_end, mask_schedule)  # validate
        self.windows = tuple(tuple(int(v) for v in w) for w in windows)
        self.paste = parse_paste(paste)
        if self.paste is None:
            raise UserError("STAGE paste must be true or false, got null")
        self.load_pending_checkpoint()

    # ------------------------------------------------------------------ model pieces
    def training_mask(self, mask: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """M_t for per-sample training timesteps t (the official ``EMA(step=t)``)."""
        return explicit_mask(mask, t, self.num_timesteps, self.shrink_end, self.mask_schedule)

    def adapter(self, branch: str):
        if branch == "aware":
            return self.fine_image
        if branch == "only":
            return self.fine_mask
        raise ValueError(f"unknown STAGE branch '{branch}' (aware, only)")

    def apply_model(self, x_noisy, t, cond, return_ids: bool = False, mask: torch.Tensor | None = None,
                    branch: str = "aware"):
        """UNet ε̂, then the branch's adapter with ``mask`` (M_t for ``aware``, M for ``only``)."""
        eps = super().apply_model(x_noisy, t, cond)
        return apply_adaptor(self.adapter(branch), self.adaptor_mode, eps, mask)

    def branch_denoiser(self, cond):
        """``(x, t, branch, mask) -> ε̂`` for :class:`STAGESampler`."""
        def eps_fn(x, t, branch: str = "aware", mask: torch.Tensor | None = None):
            return self.apply_model(x, t, cond, mask=mask, branch=branch)
        return eps_fn

    # ------------------------------------------------------------------ training
    def p_losses(self, x_start, cond, t, noise=None, mask=None, noise_mask=None):
        """The STAGE loss for latent mask ``mask`` (B×1×h×w, {0,1}); ``noise`` is ε, ``noise_mask`` ε'."""
        if mask is None:
            raise ValueError("STAGE.p_losses needs the latent anomaly mask")
        noise = default(noise, lambda: self.training_noise(x_start))
        noise_mask = default(noise_mask, lambda: torch.randn_like(x_start))
        m = mask.to(device=x_start.device, dtype=x_start.dtype)
        m_t = self.training_mask(m, t)
        x_t = self.q_sample(x_start, t, noise)
        m_noisy = self.q_sample(m * x_start, t, noise_mask)
        if torch.is_tensor(cond):  # one UNet pass for both inputs (the UNet has no batch statistics)
            n = x_start.shape[0]
            eps_unet = LatentDiffusion.apply_model(self, torch.cat([x_t, m_noisy]), torch.cat([t, t]),
                                                   torch.cat([cond, cond]))
            eps_img, eps_mask = eps_unet[:n], eps_unet[n:]
        else:
            eps_img = LatentDiffusion.apply_model(self, x_t, t, cond)
            eps_mask = LatentDiffusion.apply_model(self, m_noisy, t, cond)
        eps_img = apply_adaptor(self.fine_image, self.adaptor_mode, eps_img, m_t)
        eps_mask = apply_adaptor(self.fine_mask, self.adaptor_mode, eps_mask, m)
        prefix = "train" if self.training else "val"
        simple_img, vlb_img, raw_img = self._noise_term(m_t * eps_img, m_t * noise, t)
        simple_mask, vlb_mask, raw_mask = self._noise_term(eps_mask, noise_mask, t)
        loss = (self.l_simple_weight * simple_img + self.mask_loss_weight * simple_mask
                + self.original_elbo_weight * (vlb_img + vlb_mask))
        loss_dict = {f"{prefix}/loss_simple": raw_img, f"{prefix}/loss_mask": raw_mask,
                     f"{prefix}/loss_vlb": vlb_img.detach(), f"{prefix}/loss_mask_vlb": vlb_mask.detach(),
                     f"{prefix}/loss": loss}
        return self.add_embedding_regulariser(loss, loss_dict)

    def _noise_term(self, pred, target, t):
        """(mean(L_t/exp(logvar_t) + logvar_t), ELBO term, detached plain mean) for one noise loss."""
        per_sample = self.get_loss(pred, target, mean=False).mean(dim=list(range(1, pred.ndim)))
        logvar_t = self.logvar[t]
        simple = (per_sample / torch.exp(logvar_t) + logvar_t).mean()
        vlb = (self.lvlb_weights[t] * per_sample).mean()
        return simple, vlb, per_sample.mean().detach()

    def trainable_parameters(self):
        params = super().trainable_parameters()
        params += list(self.fine_image.parameters()) + list(self.fine_mask.parameters())
        return params

    # ------------------------------------------------------------------ generation
    def sampler_for(self, name: str, steps: int | None, opts: dict) -> STAGESampler:
        """Both names are the two-branch loop: ``ddpm`` the official one over every timestep, ``stage``
        with ``steps`` network calls (the accelerated variant; None or T = every timestep again).
        ``opts`` go to :class:`STAGESampler` (e.g. ``grid``, ``kernel``, ``paste``); the model's windows /
        mask schedule are the defaults. ``paste`` (None: the model's ``paste``) is what ``generate`` does."""
        opts.setdefault("windows", self.windows)
        opts.setdefault("mask_schedule", self.mask_schedule)
        opts.setdefault("shrink_end", self.shrink_end)
        return build_sampler("stage", self.schedule, steps=steps, **opts)

    def check_generation_sampler(self, sampler) -> None:
        """The two-branch denoiser runs only STAGE's own loop."""
        if not isinstance(sampler, STAGESampler):
            raise TypeError(f"STAGE.generate needs a STAGESampler (model.make_sampler('stage', steps)), "
                            f"got {type(sampler).__name__}")

    def sampling_plan(self, cond, latent_mask: torch.Tensor, z_bg: torch.Tensor, **fast_only):
        """``(denoiser, guidance)`` for ``sampler.sample``: the two-branch denoiser, and a guidance that
        only carries M and z_bg (STAGE's sampler applies its own mask alignment). FAST's keys
        (``farm``, ``farm_mode``, ``writeback``) are accepted and ignored, so callers stay generic."""
        from ldm.models.diffusion.samplers.guidance import MaskGuidance

        unknown = sorted(set(fast_only) - set(FAST_ONLY_GUIDANCE) - {"farm"})
        if unknown:
            raise UserError(f"STAGE: unknown guidance options {unknown}")
        return self.branch_denoiser(cond), MaskGuidance(latent_mask, z_bg=z_bg, writeback="off")

    def log_sampler_steps(self, steps: int) -> int:
        # the aligned grid needs one segment per branch interval (at most 2·windows + 1)
        return max(int(steps), 2 * len(self.windows) + 1)


# the steps --weight_idx accepts (the class knows its artifact prefixes)
available_artifact_steps = STAGE.artifact_steps
