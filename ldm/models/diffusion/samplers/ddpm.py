"""Ancestral DDPM over every timestep: the 1000-NFE reference that AIAS approximates."""
from __future__ import annotations

from utils.errors import UserError

from ..schedule import NoiseSchedule
from .base import Sampler, Step


class DDPMSampler(Sampler):
    """x_{t-1} = B_t x_t + A_t x0_hat + sigma_t z (no noise at t = 0, as LDM's p_sample).

    Guidance hooks run at every step; the write-back follows the guidance's own window rule.
    """

    def __init__(self, schedule: NoiseSchedule, t_start: int | None = None, clip_x0: float | None = None):
        super().__init__(schedule, clip_x0=clip_x0)
        top = schedule.num_timesteps - 1
        self.t_start = None if t_start is None else int(t_start)
        start = top if self.t_start is None else self.t_start
        if not (0 <= start <= top):
            raise UserError(f"t_start must lie in [0, {top}], got {start}")
        bufs = schedule.buffers()
        coef_b = bufs["posterior_mean_coef2"].tolist()
        coef_a = bufs["posterior_mean_coef1"].tolist()
        var = bufs["posterior_variance"].tolist()
        self.steps = [Step(t, t - 1, coef_b[t], coef_a[t], self._std(var[t]) if t > 0 else 0.0)
                      for t in range(start, -1, -1)]
