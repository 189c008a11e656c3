"""Closed-form Gaussian transition kernels between two timesteps, in float64.

Every sampler here moves the state with ``x_te = Pi * x + Sigma * x0_hat + sqrt(V) * z``; the kernels
only differ in how (Pi, Sigma, V) follow from the schedule. Timesteps are 0-based LDM indices
(paper t = c + 1); ``t_e = -1`` is the clean data (alpha_bar = 1).
"""
from __future__ import annotations

import math

from ..schedule import NoiseSchedule

KERNELS = ("exact", "paper")


def _check_jump(schedule: NoiseSchedule, t_s: int, t_e: int) -> tuple[int, int]:
    t_s, t_e = int(t_s), int(t_e)
    if not (-1 <= t_e < t_s <= schedule.num_timesteps - 1):
        raise ValueError(f"need -1 <= t_e < t_s <= {schedule.num_timesteps - 1}, got t_s={t_s}, t_e={t_e}")
    return t_s, t_e


def posterior_step(schedule: NoiseSchedule, t: int) -> tuple[float, float, float]:
    """(B, A, sigma^2) of the one-step posterior q(x_{t-1} | x_t, x0) from the CompVis buffers.

    Uses the registered ``posterior_variance`` so a non-zero ``v_posterior`` is honoured, as in LDM.
    """
    bufs = schedule.buffers()
    return (float(bufs["posterior_mean_coef2"][t]), float(bufs["posterior_mean_coef1"][t]),
            float(bufs["posterior_variance"][t]))


def _exact(schedule: NoiseSchedule, t_s: int, t_e: int) -> tuple[float, float, float]:
    # q(x_te | x_ts, x0): Gaussian conditioning of the forward marginals; O(1), no products.
    ab_s = schedule.alpha_bar(t_s)
    ab_e = schedule.alpha_bar(t_e)
    ab_se = ab_s / ab_e
    denom = 1.0 - ab_s
    pi = math.sqrt(ab_se) * (1.0 - ab_e) / denom
    sigma = math.sqrt(ab_e) * (1.0 - ab_se) / denom
    var = (1.0 - ab_e) * (1.0 - ab_se) / denom
    return pi, sigma, var


def _paper(schedule: NoiseSchedule, t_s: int, t_e: int) -> tuple[float, float, float]:
    # The printed Lemma 2 / Eq. 5 form (and the official code): each injected term is multiplied by
    # the B of the *earlier* steps i+1..t_s instead of the later ones. Kept bug-compatible on purpose.
    bufs = schedule.buffers()
    coef_b = bufs["posterior_mean_coef2"].tolist()
    coef_a = bufs["posterior_mean_coef1"].tolist()
    var_s = bufs["posterior_variance"].tolist()
    tail = 1.0  # prod_{j=c+1}^{t_s} B_j in 0-based indices
    sigma = 0.0
    var = 0.0
    for c in range(t_s, t_e, -1):
        sigma += coef_a[c] * tail
        var += tail * tail * var_s[c]
        tail *= coef_b[c]
    return tail, sigma, var


def segment_coefficients(schedule: NoiseSchedule, t_s: int, t_e: int, kind: str = "exact"
                         ) -> tuple[float, float, float]:
    """(Pi, Sigma, V) for one aggregated AIAS jump t_s -> t_e with x0_hat held fixed.

    ``exact`` is the true multi-step posterior (= DDIM with eta = 1); ``paper`` is the printed
    formula, which is wrong in Sigma and V (docs/method.md §2.3, "Why the printed kernel is wrong")
    and only offered for reproduction.
    """
    t_s, t_e = _check_jump(schedule, t_s, t_e)
    if kind == "exact":
        return _exact(schedule, t_s, t_e)
    if kind == "paper":
        return _paper(schedule, t_s, t_e)
    raise ValueError(f"unknown AIAS kernel '{kind}' ({', '.join(KERNELS)})")


def compose_single_steps(schedule: NoiseSchedule, t_s: int, t_e: int) -> tuple[float, float, float]:
    """Reference: fold the one-step posteriors t_s -> t_s-1 -> ... -> t_e one at a time."""
    t_s, t_e = _check_jump(schedule, t_s, t_e)
    bufs = schedule.buffers()
    coef_b = bufs["posterior_mean_coef2"].tolist()
    coef_a = bufs["posterior_mean_coef1"].tolist()
    var_s = bufs["posterior_variance"].tolist()
    pi, sigma, var = 1.0, 0.0, 0.0
    for c in range(t_s, t_e, -1):
        pi = coef_b[c] * pi
        sigma = coef_b[c] * sigma + coef_a[c]
        var = coef_b[c] * coef_b[c] * var + var_s[c]
    return pi, sigma, var


def ddim_sigma2(schedule: NoiseSchedule, t_s: int, t_e: int, eta: float) -> float:
    """DDIM's sigma^2(eta) = eta^2 (1-ab_e)/(1-ab_s) (1 - ab_s/ab_e)."""
    ab_s = schedule.alpha_bar(t_s)
    ab_e = schedule.alpha_bar(t_e)
    return eta * eta * (1.0 - ab_e) / (1.0 - ab_s) * (1.0 - ab_s / ab_e)


def ddim_coefficients(schedule: NoiseSchedule, t_s: int, t_e: int, eta: float = 0.0
                      ) -> tuple[float, float, float]:
    """A DDIM step rewritten in the (x, x0_hat) form shared by all samplers.

    x_te = sqrt(ab_e) x0 + sqrt(1 - ab_e - s2) eps + s z with eps = (x - sqrt(ab_s) x0) / sqrt(1 - ab_s),
    so Pi = sqrt(1-ab_e-s2)/sqrt(1-ab_s), Sigma = sqrt(ab_e) - Pi sqrt(ab_s), V = s2.
    """
    t_s, t_e = _check_jump(schedule, t_s, t_e)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    ab_s = schedule.alpha_bar(t_s)
    ab_e = schedule.alpha_bar(t_e)
    s2 = ddim_sigma2(schedule, t_s, t_e, eta)
    c_eps = math.sqrt(max(1.0 - ab_e - s2, 0.0))
    pi = c_eps / math.sqrt(1.0 - ab_s)
    sigma = math.sqrt(ab_e) - pi * math.sqrt(ab_s)
    return pi, sigma, s2
