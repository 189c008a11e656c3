"""The one sampler registry: every sampler name, the class it builds, and how a model limits the choice.

``SAMPLER_CLASSES`` maps each name to its class in :mod:`ldm.models.diffusion.samplers`; ``build_sampler``
turns a name and a step budget into an instance. A model class names the samplers its ``make_sampler``
accepts in its ``samplers`` attribute (``MaskedLatentDiffusion`` checks it with ``check_sampler``, so
every model refuses a name outside its set with the same one-line ``UserError``):

- ``ONE_BRANCH_SAMPLERS`` run a single denoiser ``eps(x, t)``: FAST, GroundingAnomaly, the studio;
- STAGE runs its two-branch loop, named ``stage`` (K network calls) or ``ddpm`` (every timestep).

This module imports no torch (the classes load when a sampler is built), so command lines list the
names without loading it.
"""
from __future__ import annotations

from utils.errors import UserError

# name -> class name in ldm.models.diffusion.samplers (the CompVis-API DDIMSampler / PLMSSampler
# are the adapters in ldm/models/diffusion/ddim.py and plms.py, hence DDIMSteps / PLMSSteps here)
SAMPLER_CLASSES = {"aias": "AIASSampler", "ddpm": "DDPMSampler", "ddim": "DDIMSteps", "plms": "PLMSSteps",
                   "stage": "STAGESampler"}
SAMPLERS = tuple(SAMPLER_CLASSES)
ONE_BRANCH_SAMPLERS = ("aias", "ddim", "plms", "ddpm")
DEFAULT_GRID_STEPS = 50  # ddim / plms without a step count


def sampler_class(name: str) -> type:
    """The class a sampler name builds."""
    from ldm.models.diffusion import samplers

    return getattr(samplers, SAMPLER_CLASSES[check_sampler("build_sampler", name)])


def check_sampler(owner: str, name: str, allowed=SAMPLERS) -> str:
    """``name`` lower-cased when ``allowed`` holds it; else a one-line ``UserError`` naming ``owner``
    (a model class, or the function asked) and the names it takes."""
    key = str(name).lower()
    if key not in allowed:
        raise UserError(f"{owner}: sampler must be one of {', '.join(allowed)}, got '{name}'")
    return key


def check_ddpm_steps(steps: int | None, num_timesteps: int) -> None:
    """``ddpm`` runs every timestep (all T, or those from its t_start down): ``steps`` must be None or T."""
    if steps is not None and int(steps) != num_timesteps:
        raise UserError(f"ddpm always runs every timestep (steps={num_timesteps} or none), got steps={steps}")


def build_sampler(name: str, schedule, steps: int | None = None, **kw):
    """Sampler ``name`` over ``schedule`` (a ``NoiseSchedule``); ``kw`` go to its class.

    ``steps`` is the number of network calls: for ``aias`` segments = steps − refine_steps; ``ddim`` /
    ``plms`` default to 50 grid points; ``ddpm`` runs every timestep (``check_ddpm_steps``); for ``stage``
    None (or T) is the official 1000-step loop, K < T the accelerated K-segment variant.
    """
    name = check_sampler("build_sampler", name)
    cls = sampler_class(name)
    if name == "aias":
        if steps is not None:
            if "segments" in kw:
                raise UserError("give either steps (total NFE) or segments for aias, not both")
            kw["segments"] = int(steps) - int(kw.get("refine_steps", 2))
        return cls(schedule, **kw)
    if name == "ddpm":
        check_ddpm_steps(steps, schedule.num_timesteps)
        return cls(schedule, **kw)
    if name in ("ddim", "plms"):
        return cls(schedule, steps=DEFAULT_GRID_STEPS if steps is None else int(steps), **kw)
    return cls(schedule, steps=steps, **kw)
