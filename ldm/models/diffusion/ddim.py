"""CompVis-API adapter: ``DDIMSampler(model).sample(S, batch_size, shape, ...)`` on our sampler core.

The import path CompVis scripts use (``from ldm.models.diffusion.ddim import DDIMSampler``, and
``...plms import PLMSSampler``) keeps working here; the samplers themselves are
``ldm.models.diffusion.samplers.DDIMSteps`` / ``PLMSSteps`` (the project's own code uses those).

The model must expose ``apply_model(x, t, cond)`` and a ``schedule`` (NoiseSchedule). Note the LDM
inpainting convention here: ``mask = 1`` KEEPS ``x0``; it is flipped internally to our
"1 = generate" convention and blended into the network input before every step, as LDM does.
"""
from __future__ import annotations

import torch

from .samplers import ddim as _core_ddim
from .samplers.grids import ddim_timesteps
from .samplers.guidance import MaskGuidance, guided_eps
from .samplers.rng import as_batch_rng

_UNSUPPORTED = {"normals_sequence": None, "quantize_x0": False, "temperature": 1.0, "noise_dropout": 0.0,
                "score_corrector": None}


def _cat_cond(uc, c):
    """Stack unconditional and conditional inputs along the batch, for one CFG forward pass."""
    if isinstance(c, dict):
        return {k: _cat_cond(uc[k], c[k]) for k in c}
    if isinstance(c, (list, tuple)):
        return [_cat_cond(u, v) for u, v in zip(uc, c)]
    return torch.cat([uc, c])


def make_denoiser(model, conditioning, scale: float = 1.0, unconditional_conditioning=None):
    """eps(x, t) from ``model.apply_model``, with classifier-free guidance (``guided_eps``) in one batched pass."""
    if scale == 1.0 or unconditional_conditioning is None:
        return lambda x, t: model.apply_model(x, t, conditioning)

    def denoiser(x, t):
        out = model.apply_model(torch.cat([x, x]), torch.cat([t, t]),
                                _cat_cond(unconditional_conditioning, conditioning))
        eps_u, eps_c = out.chunk(2)
        return guided_eps(eps_u, eps_c, scale)

    return denoiser


def _model_device(model):
    dev = getattr(model, "device", None)
    if isinstance(dev, (torch.device, str)):
        return torch.device(dev)
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


class DDIMSampler:
    """LDM-compatible front end; ``make_schedule`` exposes the same grid attributes as CompVis."""

    _name = "DDIMSampler"

    def __init__(self, model, schedule: str = "linear", **kwargs):
        self.model = model
        self.schedule = model.schedule
        self.ddpm_num_timesteps = self.schedule.num_timesteps
        self.core = None

    def _build_core(self, steps, discretize, eta):
        ts = ddim_timesteps(self.ddpm_num_timesteps, steps, discretize)
        return _core_ddim.DDIMSteps(self.schedule, timesteps=ts, eta=eta)

    def make_schedule(self, ddim_num_steps, ddim_discretize: str = "uniform", ddim_eta: float = 0.,
                      verbose: bool = True):
        self.core = self._build_core(ddim_num_steps, ddim_discretize, ddim_eta)
        ts = sorted(self.core.timesteps)
        ab = self.schedule.alphas_cumprod
        self.ddim_timesteps = torch.tensor(ts, dtype=torch.long)
        self.ddim_alphas = ab[self.ddim_timesteps]
        self.ddim_alphas_prev = torch.cat([ab[:1], ab[self.ddim_timesteps[:-1]]])
        self.ddim_sqrt_one_minus_alphas = (1.0 - self.ddim_alphas).sqrt()
        self.ddim_sigmas = ddim_eta * ((1 - self.ddim_alphas_prev) / (1 - self.ddim_alphas)
                                       * (1 - self.ddim_alphas / self.ddim_alphas_prev)).sqrt()
        if verbose:
            print(f"{self._name}: {len(ts)} steps, timesteps {ts[0]}..{ts[-1]}, eta {ddim_eta}")

    def sample(self, S, batch_size, shape, conditioning=None, callback=None, img_callback=None, eta: float = 0.,
               mask=None, x0=None, x_T=None, unconditional_guidance_scale: float = 1.,
               unconditional_conditioning=None, verbose: bool = True, log_every_t: int = 100, rng=None,
               ddim_discretize: str = "uniform", **kwargs):
        """Returns ``(samples, intermediates)`` with intermediates ``{"x_inter": [...], "pred_x0": [...]}``.

        ``rng`` (extension): BatchRNG / seeds / torch.Generator; None uses torch's global RNG like LDM.
        """
        for key, default in _UNSUPPORTED.items():
            if key in kwargs and kwargs[key] != default:
                raise NotImplementedError(f"{self._name}.sample: '{key}' is not supported")
        self.make_schedule(S, ddim_discretize=ddim_discretize, ddim_eta=eta, verbose=verbose)
        full_shape = (int(batch_size), *tuple(shape))
        device = x_T.device if x_T is not None else _model_device(self.model)
        guidance = None
        if mask is not None:
            if x0 is None:
                raise ValueError(f"{self._name}.sample: 'mask' needs 'x0' (the known latent)")
            guidance = MaskGuidance(1.0 - mask, z_bg=x0, writeback="before", mean_from="input")
        denoiser = make_denoiser(self.model, conditioning, unconditional_guidance_scale,
                                 unconditional_conditioning)

        rng = as_batch_rng(rng, full_shape[0])
        if x_T is None:  # drawn here (same stream the core would use) so it can head the intermediates
            x_T = rng.randn(full_shape[1:], device=device, dtype=torch.float32)
        n = len(self.core.steps)
        intermediates = {"x_inter": [x_T], "pred_x0": [x_T]}

        def record(i, t_e, x, x0_hat):
            index = n - i - 1
            if callback is not None:
                callback(i)
            if img_callback is not None:
                img_callback(x0_hat, i)
            if index % log_every_t == 0 or index == n - 1:
                intermediates["x_inter"].append(x)
                intermediates["pred_x0"].append(x0_hat)

        samples = self.core.sample(denoiser, full_shape, rng=rng, guidance=guidance, x_T=x_T,
                                   progress=verbose, callback=record, device=device)
        return samples, intermediates
