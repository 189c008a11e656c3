"""AIAS (FAST): a few aggregated posterior jumps with x0_hat held fixed, then plain DDPM steps.

Per segment the network runs once at t_s and the state jumps to t_e with precomputed (Pi, Sigma, V).
With ``kernel="exact"`` the jump is the true q(x_te | x_ts, x0_hat), i.e. one DDIM step with eta = 1;
``kernel="paper"`` reproduces the printed (and officially coded) formula, whose Sigma/V are wrong.
The final ``refine_steps`` one-step posteriors at t = R-1 ... 0 use no FARM and no write-back, as in
the official code.
"""
from __future__ import annotations

from ..schedule import NoiseSchedule
from .base import Sampler, Step
from .grids import aias_boundaries
from .kernels import segment_coefficients


class AIASSampler(Sampler):
    def __init__(self, schedule: NoiseSchedule, segments: int = 48, refine_steps: int = 2,
                 kernel: str = "exact", grid: str = "uniform", t_start: int | None = None,
                 clip_x0: float | None = None):
        super().__init__(schedule, clip_x0=clip_x0)
        self.segments = int(segments)
        self.refine_steps = int(refine_steps)
        self.kernel = kernel
        self.grid = grid
        self.t_start = None if t_start is None else int(t_start)
        self.boundaries = aias_boundaries(schedule.num_timesteps, self.segments, self.refine_steps,
                                          kind=grid, t_start=self.t_start)
        steps = []
        for t_s, t_e in zip(self.boundaries[:-1], self.boundaries[1:]):
            pi, sigma, var = segment_coefficients(schedule, t_s, t_e, kind=kernel)
            steps.append(Step(t_s, t_e, pi, sigma, self._std(var), guided=True))
        bufs = schedule.buffers()
        for t in range(self.refine_steps - 1, -1, -1):
            var = float(bufs["posterior_variance"][t]) if t > 0 else 0.0
            steps.append(Step(t, t - 1, float(bufs["posterior_mean_coef2"][t]),
                              float(bufs["posterior_mean_coef1"][t]), self._std(var), guided=False))
        self.steps = steps

    def __repr__(self) -> str:
        return (f"AIASSampler(segments={self.segments}, refine_steps={self.refine_steps}, kernel='{self.kernel}', "
                f"grid='{self.grid}', t_start={self.t_start}, nfe={self.nfe})")
