"""PLMS (pseudo linear multistep, Liu et al. 2022) as in LDM's PLMSSampler (``PLMSSteps`` here; the
CompVis-API ``PLMSSampler`` is the adapter in ``ldm/models/diffusion/plms.py``).

The first step has no eps history, so it takes a provisional DDIM step, evaluates the network again at
the next grid time and averages the two eps (Heun-like, one extra NFE); later steps extrapolate eps
with Adams-Bashforth of order 2, 3, then 4. Deterministic only: eta must be 0.
"""
from __future__ import annotations

from typing import Sequence

from tqdm.auto import tqdm

from utils.errors import UserError

from ..schedule import NoiseSchedule
from .base import Sampler, Step
from .grids import ldm_transitions
from .kernels import ddim_coefficients


class PLMSSteps(Sampler):
    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                 timesteps: Sequence[int] | None = None, discretize: str = "uniform",
                 t_start: int | None = None, clip_x0: float | None = None):
        if eta != 0:
            raise UserError(f"PLMS is deterministic: eta must be 0, got {eta}")
        super().__init__(schedule, clip_x0=clip_x0)
        self.t_start = None if t_start is None else int(t_start)
        self.transitions = ldm_transitions(schedule.num_timesteps, steps, timesteps, discretize, self.t_start)
        self.timesteps = [t_s for t_s, _ in self.transitions]
        self.steps = [Step(t_s, t_e, *ddim_coefficients(schedule, t_s, t_e, 0.0)[:2], 0.0)
                      for t_s, t_e in self.transitions]

    @property
    def nfe(self) -> int:
        return len(self.steps) + 1

    @staticmethod
    def _combine(eps, history):
        # Adams-Bashforth weights on the current and previous eps (newest first in history[::-1])
        if len(history) == 1:
            return (3 * eps - history[-1]) / 2
        if len(history) == 2:
            return (23 * eps - 16 * history[-1] + 5 * history[-2]) / 12
        return (55 * eps - 59 * history[-1] + 37 * history[-2] - 9 * history[-3]) / 24

    def _run(self, denoiser, x, rng, guidance, progress, callback):
        history = []
        n = len(self.steps)
        for i, step in enumerate(tqdm(self.steps, disable=not progress, desc=type(self).__name__)):
            x_in = guidance.denoiser_input(x, step.t_s, rng) if guidance is not None else x
            base = x_in if (guidance is not None and guidance.mean_from == "input") else x
            eps, _ = self._predict(denoiser, x_in, step.t_s)
            if not history:
                x0_tmp = self._x0_from_eps(x_in, eps, step.t_s)
                x_tmp = step.pi * base + step.sigma * x0_tmp
                t_next = self.steps[min(i + 1, n - 1)].t_s  # LDM evaluates at the next grid time
                x_tmp_in = guidance.denoiser_input(x_tmp, t_next, rng) if guidance is not None else x_tmp
                eps_next, _ = self._predict(denoiser, x_tmp_in, t_next)
                eps_prime = (eps + eps_next) / 2
            else:
                eps_prime = self._combine(eps, history)
            x0 = self._x0_from_eps(x_in, eps_prime, step.t_s)
            x = step.pi * base + step.sigma * x0
            if guidance is not None:
                x = guidance.after_step(x, step.t_e, rng)
            history.append(eps)
            if len(history) > 3:
                history.pop(0)
            if callback is not None:
                callback(i, step.t_e, x, x0)
        return x
