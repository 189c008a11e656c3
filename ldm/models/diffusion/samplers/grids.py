"""Timestep grids (0-based LDM indices, descending unless stated)."""
from __future__ import annotations

from typing import Sequence

import torch

from utils.errors import UserError

GRID_KINDS = ("uniform", "coarse_to_fine")


def aias_boundaries(num_timesteps: int, segments: int, refine_steps: int = 2, kind: str = "uniform",
                    t_start: int | None = None) -> list[int]:
    """The K+1 descending AIAS segment boundaries t_start = b_0 > ... > b_K = refine_steps - 1.

    ``uniform`` is the official FAST grid, ``linspace(T-1, R-1, K+1)`` truncated to integers
    (999, 978, ..., 21, 1 for T=1000, K=48, R=2). ``coarse_to_fine`` spends more boundaries at small t,
    where x0_hat changes fastest: every segment gets one step and the remaining steps are shared out
    with quadratic spacing, b_k = lo + (K-k) + floor(extra * ((K-k)/K)^2). ``t_start`` < T-1 starts
    from a partially noised latent (SDEdit / NDI style). With ``refine_steps = 0`` the last boundary
    is -1, i.e. the last segment lands on the clean data.
    """
    segments, refine_steps = int(segments), int(refine_steps)
    hi = num_timesteps - 1 if t_start is None else int(t_start)
    lo = refine_steps - 1
    if segments < 1:
        raise UserError(f"AIAS needs at least one segment, got {segments}")
    if refine_steps < 0:
        raise UserError(f"refine_steps must be >= 0, got {refine_steps}")
    if not (0 <= hi <= num_timesteps - 1):
        raise UserError(f"t_start must lie in [0, {num_timesteps - 1}], got {hi}")
    if hi - lo < segments:
        raise UserError(f"{segments} segments do not fit between t={hi} and t={lo}")
    if kind == "uniform":
        b = torch.linspace(hi, lo, segments + 1, dtype=torch.float64).long().tolist()
        if len(set(b)) != len(b):  # only possible for very short ranges after truncation
            raise UserError(f"uniform grid of {segments} segments over [{lo}, {hi}] repeats a timestep")
        return b
    if kind == "coarse_to_fine":
        extra = hi - lo - segments
        out = []
        for k in range(segments + 1):
            s = (segments - k) / segments
            out.append(lo + (segments - k) + int(extra * s * s))
        out[0] = hi  # guard against floating point in int(extra * 1.0)
        return out
    raise UserError(f"unknown AIAS grid '{kind}' ({', '.join(GRID_KINDS)})")


def ddim_timesteps(num_timesteps: int, steps: int, discretize: str = "uniform") -> list[int]:
    """LDM's DDIM grid, ascending: ``range(0, T, T // S) + 1`` (1, 21, ..., 981 for S = 50).

    ``quad`` is LDM's ``(linspace(0, sqrt(0.8 T), S) ** 2).astype(int) + 1``.
    """
    steps = int(steps)
    if not (1 <= steps <= num_timesteps):
        raise UserError(f"DDIM steps must lie in [1, {num_timesteps}], got {steps}")
    if discretize == "uniform":
        stride = num_timesteps // steps
        ts = [c + 1 for c in range(0, num_timesteps, stride)]
    elif discretize == "quad":
        root = torch.linspace(0, (num_timesteps * 0.8) ** 0.5, steps, dtype=torch.float64)
        ts = [int(v) + 1 for v in (root ** 2).tolist()]
    else:
        raise UserError(f"unknown ddim_discretize '{discretize}' (uniform, quad)")
    # LDM's "+1" pushes T//S == 1 grids past the end; keep valid, strictly increasing indices only
    ts = sorted({min(t, num_timesteps - 1) for t in ts})
    return ts


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


def ldm_transitions(num_timesteps: int, steps: int, timesteps: Sequence[int] | None, discretize: str,
                    t_start: int | None) -> list[tuple[int, int]]:
    """The (t_s, t_e) pairs DDIM and PLMS walk: LDM's grid (or ``timesteps``), cut at ``t_start``."""
    if timesteps is None:
        timesteps = ddim_timesteps(num_timesteps, steps, discretize)
    timesteps = truncate_grid(timesteps, t_start, num_timesteps)
    return descending_transitions(timesteps, num_timesteps)
