"""DDIM (Song et al.) on LDM's grid, with LDM's sigma(eta); eta = 1 on the AIAS grid is exact AIAS."""
from __future__ import annotations

from typing import Sequence

from ..schedule import NoiseSchedule
from .base import Sampler, Step
from .grids import ldm_transitions
from .kernels import ddim_coefficients


class DDIMSteps(Sampler):
    """DDIM as a list of ``Step``s on LDM's grid (``ldm.models.diffusion.ddim.DDIMSampler`` is the
    CompVis-API adapter over it)."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                 timesteps: Sequence[int] | None = None, discretize: str = "uniform",
                 t_start: int | None = None, clip_x0: float | None = None):
        super().__init__(schedule, clip_x0=clip_x0)
        self.eta = float(eta)
        self.t_start = None if t_start is None else int(t_start)
        self.transitions = ldm_transitions(schedule.num_timesteps, steps, timesteps, discretize, self.t_start)
        self.timesteps = [t_s for t_s, _ in self.transitions]
        out = []
        for t_s, t_e in self.transitions:
            pi, sigma, var = ddim_coefficients(schedule, t_s, t_e, self.eta)
            out.append(Step(t_s, t_e, pi, sigma, self._std(var)))
        self.steps = out
