"""DDIM (Song et al.) on LDM's grid, with LDM's sigma(eta); eta = 1 on the AIAS grid is exact AIAS."""
from __future__ import annotations

from typing import Sequence

from utils.errors import UserError

from ..schedule import NoiseSchedule
from .base import Sampler, Step
from .grids import ddim_timesteps
from .kernels import ddim_coefficients


def truncate_grid(timesteps: Sequence[int], t_start: int | None, num_timesteps: int) -> list[int]:
    """The grid for a run that starts at ``t_start`` (SDEdit / NDI): the grid points below it plus
    ``t_start`` itself, so the first network call sees the state exactly where x_T was noised to."""
    if t_start is None:
        return list(timesteps)
    t_start = int(t_start)
    if not (0 <= t_start <= num_timesteps - 1):
        raise UserError(f"t_start must lie in [0, {num_timesteps - 1}], got {t_start}")
    return [int(t) for t in timesteps if int(t) < t_start] + [t_start]


def descending_transitions(timesteps: Sequence[int], num_timesteps: int) -> list[tuple[int, int]]:
    """(t_s, t_e) pairs over a grid, largest first. As in LDM the last step lands on c = 0
    (alphas_cumprod[0], not clean data); a grid that already contains 0 ends on clean data (-1)."""
    ts = sorted({int(t) for t in timesteps}, reverse=True)
    if not ts or ts[-1] < 0 or ts[0] > num_timesteps - 1:
        raise UserError(f"timesteps must lie in [0, {num_timesteps - 1}], got {list(timesteps)}")
    final = 0 if ts[-1] > 0 else -1
    return list(zip(ts, ts[1:] + [final]))


def ldm_transitions(schedule: NoiseSchedule, steps: int, timesteps: Sequence[int] | None, discretize: str,
                    t_start: int | None) -> list[tuple[int, int]]:
    """The (t_s, t_e) pairs DDIM and PLMS walk: LDM's grid (or ``timesteps``), cut at ``t_start``."""
    if timesteps is None:
        timesteps = ddim_timesteps(schedule.num_timesteps, steps, discretize)
    timesteps = truncate_grid(timesteps, t_start, schedule.num_timesteps)
    return descending_transitions(timesteps, schedule.num_timesteps)


class DDIMSteps(Sampler):
    """DDIM as a list of ``Step``s on LDM's grid (``ldm.models.diffusion.ddim.DDIMSampler`` is the
    CompVis-API adapter over it)."""

    def __init__(self, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                 timesteps: Sequence[int] | None = None, discretize: str = "uniform",
                 t_start: int | None = None, clip_x0: float | None = None):
        super().__init__(schedule, clip_x0=clip_x0)
        self.eta = float(eta)
        self.t_start = None if t_start is None else int(t_start)
        self.transitions = ldm_transitions(schedule, steps, timesteps, discretize, self.t_start)
        self.timesteps = [t_s for t_s, _ in self.transitions]
        out = []
        for t_s, t_e in self.transitions:
            pi, sigma, var = ddim_coefficients(schedule, t_s, t_e, self.eta)
            out.append(Step(t_s, t_e, pi, sigma, self._std(var)))
        self.steps = out
