"""The DDPM noise schedule, separate from any model (diffusers-style).

Everything is computed in float64 (CompVis does the same in numpy) and only cast when a model
registers it as float32 buffers. Samplers take a :class:`NoiseSchedule` and a denoiser callable and
nothing else, so they can be tested against closed forms in float64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Schedules always live on the CPU in float64 (also under a ``torch.device("meta")`` context).
_CPU = torch.device("cpu")
_F64 = torch.float64

#: the 12 persistent buffers of CompVis ``DDPM.register_schedule``, in checkpoint order
SCHEDULE_BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def make_beta_schedule(schedule: str, n_timestep: int, linear_start: float = 1e-4,
                       linear_end: float = 2e-2, cosine_s: float = 8e-3) -> torch.Tensor:
    """Betas in float64. ``linear`` is LDM's linear-in-sqrt(beta) schedule (diffusers' scaled_linear)."""
    if schedule == "linear":
        betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, n_timestep, dtype=_F64, device=_CPU) ** 2
    elif schedule == "cosine":
        steps = torch.arange(n_timestep + 1, dtype=_F64, device=_CPU) / n_timestep + cosine_s
        alphas = torch.cos(steps / (1 + cosine_s) * math.pi / 2).pow(2)
        alphas = alphas / alphas[0]
        betas = (1 - alphas[1:] / alphas[:-1]).clamp(min=0, max=0.999)
    elif schedule == "sqrt_linear":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=_F64, device=_CPU)
    elif schedule == "sqrt":
        betas = torch.linspace(linear_start, linear_end, n_timestep, dtype=_F64, device=_CPU) ** 0.5
    else:
        raise ValueError(f"unknown beta_schedule '{schedule}' (linear, cosine, sqrt_linear, sqrt)")
    return betas


@dataclass(frozen=True)
class NoiseSchedule:
    """float64 schedule tensors, indexed by the 0-based LDM timestep ``c`` (paper t = c + 1)."""

    betas: torch.Tensor
    v_posterior: float = 0.0

    def __post_init__(self):
        if self.betas.ndim != 1 or len(self.betas) < 2:
            raise ValueError("betas must be a 1-D tensor with at least 2 entries")
        object.__setattr__(self, "betas", self.betas.detach().to(torch.float64).cpu())

    @classmethod
    def from_config(cls, beta_schedule: str = "linear", timesteps: int = 1000, linear_start: float = 1e-4,
                    linear_end: float = 2e-2, cosine_s: float = 8e-3, given_betas=None,
                    v_posterior: float = 0.0) -> "NoiseSchedule":
        if given_betas is not None:
            betas = torch.as_tensor(given_betas, dtype=_F64, device=_CPU)
        else:
            betas = make_beta_schedule(beta_schedule, timesteps, linear_start, linear_end, cosine_s)
        return cls(betas=betas, v_posterior=v_posterior)

    # --- derived quantities (cheap; recomputed on access, all float64) -------------------------
    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    @property
    def alphas(self) -> torch.Tensor:
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alphas_cumprod_prev(self) -> torch.Tensor:
        return torch.cat([torch.ones(1, dtype=_F64, device=_CPU), self.alphas_cumprod[:-1]])

    def alpha_bar(self, c: int) -> float:
        """ᾱ at 0-based step c; ``c = -1`` means the clean data (ᾱ = 1)."""
        return 1.0 if c < 0 else float(self.alphas_cumprod[c])

    def buffers(self) -> dict[str, torch.Tensor]:
        """The 12 CompVis schedule buffers (float64) plus the non-persistent ``lvlb_weights`` for eps."""
        b = self.betas
        a = self.alphas
        ac = self.alphas_cumprod
        acp = self.alphas_cumprod_prev
        v = self.v_posterior
        post_var = (1 - v) * b * (1.0 - acp) / (1.0 - ac) + v * b
        out = {
            "betas": b,
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": acp,
            "sqrt_alphas_cumprod": ac.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - ac).sqrt(),
            "log_one_minus_alphas_cumprod": (1.0 - ac).log(),
            "sqrt_recip_alphas_cumprod": (1.0 / ac).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / ac - 1).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
            "posterior_mean_coef1": b * acp.sqrt() / (1.0 - ac),
            "posterior_mean_coef2": (1.0 - acp) * a.sqrt() / (1.0 - ac),
        }
        return out

    def lvlb_weights(self, parameterization: str = "eps") -> torch.Tensor:
        bufs = self.buffers()
        if parameterization == "eps":
            w = self.betas ** 2 / (2 * bufs["posterior_variance"] * self.alphas * (1 - self.alphas_cumprod))
        elif parameterization == "x0":
            w = 0.5 * self.alphas_cumprod.sqrt() / (2.0 * 1 - self.alphas_cumprod)
        else:
            raise NotImplementedError(f"parameterization '{parameterization}' (eps, x0)")
        w = w.clone()
        w[0] = w[1]
        return w
