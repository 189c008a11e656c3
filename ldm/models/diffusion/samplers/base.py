"""Sampler base: a noise schedule plus a denoiser callable, nothing else.

``denoiser(x, t) -> eps_hat`` takes the latent the network should see and a B-long int64 tensor of
0-based timesteps; the caller closes over conditioning, adaptors and guidance scales. Every
transition here is linear in the state and in x0_hat, ``x_te = Pi x + Sigma x0_hat + sqrt(V) z``,
so AIAS, DDPM and DDIM share one step routine and differ only in their (t_s, t_e, Pi, Sigma, V) list.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..schedule import NoiseSchedule
from .rng import as_batch_rng

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Step:
    """One transition t_s -> t_e (t_e = -1: clean data); ``guided`` enables the mask hooks."""

    t_s: int
    t_e: int
    pi: float
    sigma: float
    std: float
    guided: bool = True


class Sampler:
    """Base class. Subclasses fill ``self.steps`` (or override ``_run``) and ``nfe``."""

    def __init__(self, schedule: NoiseSchedule, clip_x0: float | None = None):
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, not {type(schedule).__name__}")
        self.schedule = schedule
        self.clip_x0 = clip_x0
        ab = schedule.alphas_cumprod
        self._sqrt_ab = ab.sqrt().tolist()
        self._sqrt_1m_ab = (1.0 - ab).sqrt().tolist()
        self.steps: list[Step] = []
        self.t_start: int | None = None

    @property
    def nfe(self) -> int:
        """Network calls per sample."""
        return len(self.steps)

    # --- public entry point ----------------------------------------------------------------------
    def sample(self, denoiser: Denoiser, shape, rng=None, guidance=None, x_T: torch.Tensor | None = None,
               progress: bool = False, callback: Callable | None = None, device=None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
        """Run the chain and return the final latent (B × ...).

        rng: BatchRNG (per-sample, batch-size independent), list of seeds, torch.Generator or None.
        callback(i, t_e, x, x0_hat) is called after every step.
        """
        shape = tuple(int(s) for s in shape)
        rng = as_batch_rng(rng, shape[0])
        if guidance is not None:
            guidance = guidance.bind(self.schedule)
        if x_T is not None:
            if tuple(x_T.shape) != shape:
                raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {shape}")
            device = x_T.device if device is None else device
            dtype = x_T.dtype if dtype is None else dtype
            x = x_T.to(device=device, dtype=dtype)
        else:
            if device is None and guidance is not None:
                device = guidance.mask.device
            dtype = torch.float32 if dtype is None else dtype
            x = self._initial_state(shape, rng, guidance, device, dtype)
        with torch.no_grad():
            return self._run(denoiser, x, rng, guidance, progress, callback)

    # --- pieces shared by subclasses ---------------------------------------------------------------
    def _initial_state(self, shape, rng, guidance, device, dtype) -> torch.Tensor:
        if self.t_start is None:
            return rng.randn(shape[1:], device=device, dtype=dtype)
        if guidance is None or guidance.z_bg is None:
            raise ValueError(f"t_start={self.t_start} needs x_T or a guidance with the background latent z_bg")
        return guidance.prepare_x_T(shape, rng, t_start=self.t_start, device=device, dtype=dtype)

    def _predict(self, denoiser: Denoiser, x_in: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(eps_hat, x0_hat) at step t; x0_hat is recovered from the very latent the network saw."""
        tvec = torch.full((x_in.shape[0],), int(t), dtype=torch.long, device=x_in.device)
        eps = denoiser(x_in, tvec)
        if eps.shape != x_in.shape:
            raise ValueError(f"denoiser returned shape {tuple(eps.shape)} for input {tuple(x_in.shape)}")
        eps = eps.to(x_in.dtype)
        return eps, self._x0_from_eps(x_in, eps, t)

    def _x0_from_eps(self, x_in: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        x0 = (x_in - self._sqrt_1m_ab[t] * eps) / self._sqrt_ab[t]
        if self.clip_x0 is not None:
            x0 = x0.clamp(-self.clip_x0, self.clip_x0)
        return x0

    @staticmethod
    def _transition(base: torch.Tensor, x0: torch.Tensor, pi: float, sigma: float, std: float,
                    rng) -> torch.Tensor:
        out = pi * base + sigma * x0
        if std > 0.0:
            out = out + std * rng.randn(base.shape[1:], device=base.device, dtype=base.dtype)
        return out

    def _guided_step(self, denoiser, x, step: Step, rng, guidance):
        use = guidance is not None and step.guided
        x_in = guidance.denoiser_input(x, step.t_s, rng) if use else x
        _, x0 = self._predict(denoiser, x_in, step.t_s)
        base = x_in if (use and guidance.mean_from == "input") else x
        x = self._transition(base, x0, step.pi, step.sigma, step.std, rng)
        if use:
            x = guidance.after_step(x, step.t_e, rng)
        return x, x0

    def _run(self, denoiser, x, rng, guidance, progress, callback) -> torch.Tensor:
        for i, step in enumerate(tqdm(self.steps, disable=not progress, desc=type(self).__name__)):
            x, x0 = self._guided_step(denoiser, x, step, rng, guidance)
            if callback is not None:
                callback(i, step.t_e, x, x0)
        return x

    @staticmethod
    def _std(var: float) -> float:
        return math.sqrt(max(var, 0.0))
