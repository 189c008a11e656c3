"""PLMS against a hand-written LDM ``p_sample_plms`` loop with a time-varying eps.

A constant-eps oracle cannot tell Adams-Bashforth weights apart (any weights summing to 1 give the same
eps back). Here eps(x, t) = a(t)·x + b(t)·w depends on the state and on the time, so every history term
and every weight shows in the result; the reference loop spells out LDM's weights and its Heun-like
first step (a provisional DDIM step, eps re-evaluated at the *next* grid time, the two averaged).
"""
import math

import pytest
import torch

from ldm.models.diffusion.samplers import DDIMSteps, PLMSSteps
from ldm.models.diffusion.schedule import NoiseSchedule

SCH = NoiseSchedule.from_config("linear", 1000, 0.00085, 0.012)
F64 = torch.float64
SHAPE = (2, 3, 4, 4)
W = torch.linspace(-1.0, 1.0, math.prod(SHAPE[1:]), dtype=F64).view(1, *SHAPE[1:])


def a_of(t: int) -> float:
    return 0.4 + 0.3 * math.sin(t / 97.0)


def b_of(t: int) -> float:
    return 0.5 * math.cos(t / 61.0)


class LinearEps:
    """eps(x, t) = a(t)·x + b(t)·W with known a, b; records the timesteps it was called at."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, t):
        assert t.dtype == torch.long and t.shape == (x.shape[0],) and bool((t == t[0]).all())
        c = int(t[0])
        self.calls.append(c)
        return a_of(c) * x + b_of(c) * W.to(x)


def reference_plms(x, grid_desc):
    """LDM's PLMSSampler.sample loop (eta = 0) written out, on the descending grid ``grid_desc``."""
    ab = SCH.alphas_cumprod  # float64
    eps_fn = LinearEps()

    def x_prev_and_x0(x, e, i):
        a_t = ab[grid_desc[i]].item()
        a_prev = ab[grid_desc[i + 1]].item() if i + 1 < len(grid_desc) else ab[0].item()  # LDM ends on c = 0
        x0 = (x - math.sqrt(1.0 - a_t) * e) / math.sqrt(a_t)
        return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * e, x0

    old_eps, states = [], []
    for i, t in enumerate(grid_desc):
        t_next = grid_desc[min(i + 1, len(grid_desc) - 1)]
        e_t = eps_fn(x, torch.full((x.shape[0],), t))
        if len(old_eps) == 0:
            x_tmp, _ = x_prev_and_x0(x, e_t, i)  # Heun-like: provisional DDIM step ...
            e_next = eps_fn(x_tmp, torch.full((x.shape[0],), t_next))  # ... eps at the next grid time
            e_prime = (e_t + e_next) / 2
        elif len(old_eps) == 1:
            e_prime = (3 / 2) * e_t - (1 / 2) * old_eps[-1]
        elif len(old_eps) == 2:
            e_prime = (23 / 12) * e_t - (16 / 12) * old_eps[-1] + (5 / 12) * old_eps[-2]
        else:
            e_prime = ((55 / 24) * e_t - (59 / 24) * old_eps[-1] + (37 / 24) * old_eps[-2]
                       - (9 / 24) * old_eps[-3])
        x, _ = x_prev_and_x0(x, e_prime, i)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        states.append(x)
    return x, states, eps_fn.calls


def _x_T(seed=3):
    return torch.randn(SHAPE, dtype=F64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_plms_matches_the_hand_written_multistep_loop(steps):
    sampler = PLMSSteps(SCH, steps=steps)
    grid_desc = sorted(sampler.timesteps, reverse=True)
    assert grid_desc == sampler.timesteps  # LDM's grid: range(0, 1000, 1000 // steps) + 1
    x_T = _x_T()
    expect, expect_states, expect_calls = reference_plms(x_T.clone(), grid_desc)
    seen = []
    eps_fn = LinearEps()
    out = sampler.sample(eps_fn, SHAPE, x_T=x_T, callback=lambda i, t_e, x, x0: seen.append(x.clone()))
    assert eps_fn.calls == expect_calls and len(eps_fn.calls) == sampler.nfe == len(grid_desc) + 1
    assert len(seen) == len(grid_desc)
    for i, (got, ref) in enumerate(zip(seen, expect_states)):  # step by step: a failure names the order
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-12, msg=f"state after step {i}")
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-12)


def test_the_oracle_separates_plms_from_ddim_and_from_wrong_weights():
    """The time-varying eps makes the multistep weights matter: DDIM on the same grid, or PLMS with
    the order-3 weights swapped, ends far from the reference."""
    steps = 7
    sampler = PLMSSteps(SCH, steps=steps)
    x_T = _x_T()
    expect, _, _ = reference_plms(x_T.clone(), sampler.timesteps)
    ddim = DDIMSteps(SCH, steps=steps).sample(LinearEps(), SHAPE, x_T=x_T)
    assert (ddim - expect).abs().max() > 1e-3

    class SwappedWeights(PLMSSteps):  # order 3 with the two older weights swapped: still sums to 1
        @staticmethod
        def _combine(eps, history):
            if len(history) == 2:
                return (23 * eps + 5 * history[-1] - 16 * history[-2]) / 12
            return PLMSSteps._combine(eps, history)

    wrong = SwappedWeights(SCH, steps=steps).sample(LinearEps(), SHAPE, x_T=x_T)
    assert (wrong - expect).abs().max() > 1e-3


def test_first_step_evaluates_at_the_next_grid_time_and_averages():
    """One step in isolation: eps at t, a provisional DDIM step to t_next, eps there, the mean."""
    sampler = PLMSSteps(SCH, steps=4)
    t, t_next = sampler.timesteps[:2]
    x_T = _x_T(5)
    ab = SCH.alphas_cumprod
    e_t = a_of(t) * x_T + b_of(t) * W
    x0 = (x_T - (1 - ab[t]).sqrt() * e_t) / ab[t].sqrt()
    x_tmp = ab[t_next].sqrt() * x0 + (1 - ab[t_next]).sqrt() * e_t
    e_next = a_of(t_next) * x_tmp + b_of(t_next) * W
    e_prime = 0.5 * e_t + 0.5 * e_next
    x0_prime = (x_T - (1 - ab[t]).sqrt() * e_prime) / ab[t].sqrt()
    expect = ab[t_next].sqrt() * x0_prime + (1 - ab[t_next]).sqrt() * e_prime
    states = []
    sampler.sample(LinearEps(), SHAPE, x_T=x_T, callback=lambda i, t_e, x, x0_hat: states.append((t_e, x.clone())))
    assert states[0][0] == t_next
    torch.testing.assert_close(states[0][1], expect, rtol=0, atol=1e-12)
