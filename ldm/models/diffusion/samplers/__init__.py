"""Samplers that know a NoiseSchedule and a denoiser callable, nothing else.

Which name builds which class, and which model runs which sampler, is
:mod:`ldm.models.diffusion.sampler_registry` (``build_sampler``, ``SAMPLERS``). DDIM and PLMS are
``DDIMSteps`` / ``PLMSSteps`` here: ``DDIMSampler`` / ``PLMSSampler`` are the CompVis-API adapters
(``ldm/models/diffusion/ddim.py``, ``plms.py``) that CompVis scripts import.
"""
from __future__ import annotations

from .aias import AIASSampler
from .base import Sampler, Step
from .ddim import DDIMSteps
from .ddpm import DDPMSampler
from .grids import aias_boundaries, ddim_timesteps
from .guidance import MaskGuidance, paste
from .kernels import compose_single_steps, ddim_coefficients, segment_coefficients
from .plms import PLMSSteps
from .rng import BatchRNG
from .stage import STAGESampler

__all__ = ["AIASSampler", "BatchRNG", "DDIMSteps", "DDPMSampler", "MaskGuidance", "PLMSSteps", "STAGESampler",
           "Sampler", "Step", "aias_boundaries", "compose_single_steps", "ddim_coefficients", "ddim_timesteps",
           "paste", "segment_coefficients"]
