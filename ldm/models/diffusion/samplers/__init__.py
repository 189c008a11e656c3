"""Samplers that know a NoiseSchedule and a denoiser callable, nothing else."""
from __future__ import annotations

from ..schedule import NoiseSchedule
from .aias import AIASSampler
from .base import Sampler, Step
from .ddim import DDIMSampler
from .ddpm import DDPMSampler
from .grids import aias_boundaries, ddim_timesteps
from .guidance import MaskGuidance, paste
from .kernels import compose_single_steps, ddim_coefficients, segment_coefficients
from .plms import PLMSSampler
from .rng import BatchRNG
from .stage import STAGESampler

SAMPLERS = ("aias", "ddpm", "ddim", "plms", "stage")

__all__ = ["AIASSampler", "BatchRNG", "DDIMSampler", "DDPMSampler", "MaskGuidance", "PLMSSampler", "SAMPLERS",
           "STAGESampler", "Sampler", "Step", "aias_boundaries", "build_sampler", "compose_single_steps",
           "ddim_coefficients", "ddim_timesteps", "paste", "segment_coefficients"]


def build_sampler(name: str, schedule: NoiseSchedule, steps: int | None = None, **kw) -> Sampler:
    """Sampler by name. For ``aias``, ``steps`` is the total NFE: segments = steps - refine_steps.
    For ``stage``, ``steps`` is the NFE too (None: every timestep, the official loop)."""
    name = name.lower()
    if name == "aias":
        if steps is not None:
            if "segments" in kw:
                raise ValueError("give either steps (total NFE) or segments for aias, not both")
            kw["segments"] = int(steps) - int(kw.get("refine_steps", 2))
        return AIASSampler(schedule, **kw)
    if name == "ddpm":
        if steps is not None and int(steps) != schedule.num_timesteps:
            raise ValueError(f"ddpm always runs all {schedule.num_timesteps} steps, got steps={steps}")
        return DDPMSampler(schedule, **kw)
    if name == "ddim":
        return DDIMSampler(schedule, steps=50 if steps is None else int(steps), **kw)
    if name == "plms":
        return PLMSSampler(schedule, steps=50 if steps is None else int(steps), **kw)
    if name == "stage":  # two-branch STAGE loop; steps None (or T): the official 1000-step DDPM loop
        return STAGESampler(schedule, steps=steps, **kw)
    raise ValueError(f"unknown sampler '{name}' ({', '.join(SAMPLERS)})")
