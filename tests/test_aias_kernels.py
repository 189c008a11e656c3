"""AIAS kernels and grids against the closed forms and the numbers in docs/method.md §2.6 / §2.5."""
import math
import random

import pytest
import torch

from ldm.models.diffusion.sampler_registry import build_sampler
from ldm.models.diffusion.samplers import (aias_boundaries, compose_single_steps, ddim_coefficients, ddim_timesteps,
                                           segment_coefficients)
from ldm.models.diffusion.samplers.kernels import posterior_step
from ldm.models.diffusion.schedule import NoiseSchedule

SCHEDULES = {
    # LDM "linear" = linspace(sqrt(b0), sqrt(b1))**2 (the FAST config); DDPM linear-in-beta = LDM "sqrt_linear"
    "ldm": NoiseSchedule.from_config("linear", 1000, 0.00085, 0.012),
    "ddpm": NoiseSchedule.from_config("sqrt_linear", 1000, 1e-4, 0.02),
}
ALPHA_BAR_T = {"ldm": 4.6601e-03, "ddpm": 4.0358e-05}

# docs/method.md §2.6 table (the ldm rows; the ddpm rows are the linear-in-beta control), 1-indexed paper
# endpoints: (t_s, t_e): (Pi, Sigma correct, Sigma printed, V correct, V printed)
TABLES = {
    "ldm": {
        (2, 0): (0.000000, 1.000000, 1.000000, 0.000000, 0.000426),
        (1000, 979): (0.881414, 0.017177, 0.017132, 0.220747, 0.220771),
        (700, 600): (0.655409, 0.213217, 0.209331, 0.444395, 0.454335),
        (22, 2): (0.086069, 0.913927, 0.913914, 0.001559, 0.006588),
        (1000, 2): (0.000117, 0.999140, 0.368095, 0.001704, 0.958856),
    },
    "ddpm": {
        (2, 0): (0.000000, 1.000000, 1.000000, 0.000000, 0.000055),
        (1000, 979): (0.810572, 0.002688, 0.002668, 0.342939, 0.342940),
        (700, 600): (0.508940, 0.118393, 0.110305, 0.716905, 0.722705),
        (22, 2): (0.032330, 0.967670, 0.967668, 0.000213, 0.002260),
        (1000, 2): (0.000001, 0.999890, 0.064278, 0.000220, 0.999264),
    },
}

OFFICIAL_GRID = [999, 978, 957, 936, 915, 895, 874, 853, 832, 811, 791, 770, 749, 728, 707, 687, 666, 645, 624,
                 603, 583, 562, 541, 520, 500, 479, 458, 437, 416, 396, 375, 354, 333, 312, 292, 271, 250, 229,
                 208, 188, 167, 146, 125, 104, 84, 63, 42, 21, 1]


def _pairs():
    rnd = random.Random(0)
    pairs = list(zip(OFFICIAL_GRID[:-1], OFFICIAL_GRID[1:]))
    pairs += [(999, -1), (0, -1), (1, -1), (999, 998), (999, 0), (21, 1), (699, 599), (500, 499)]
    for _ in range(150):
        a, b = sorted(rnd.sample(range(-1, 1000), 2), reverse=True)
        pairs.append((a, b))
    return pairs


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_matches_reference(name):
    assert SCHEDULES[name].alpha_bar(999) == pytest.approx(ALPHA_BAR_T[name], rel=1e-4)


@pytest.mark.parametrize("name", SCHEDULES)
def test_exact_segment_equals_composed_single_steps(name):
    sch = SCHEDULES[name]
    for t_s, t_e in _pairs():
        exact = segment_coefficients(sch, t_s, t_e, "exact")
        ref = compose_single_steps(sch, t_s, t_e)
        assert max(abs(a - b) for a, b in zip(exact, ref)) <= 1e-10, (t_s, t_e)


@pytest.mark.parametrize("name", SCHEDULES)
def test_paper_kernel_differs_from_composition(name):
    sch = SCHEDULES[name]
    worst = max(max(abs(a - b) for a, b in zip(segment_coefficients(sch, t_s, t_e, "paper"),
                                                compose_single_steps(sch, t_s, t_e)))
                for t_s, t_e in _pairs())
    assert worst > 0.9  # 0.959 (ldm) / 0.999 (ddpm) over the reference's own segment set


@pytest.mark.parametrize("name", SCHEDULES)
def test_exact_equals_ddim_eta_one(name):
    sch = SCHEDULES[name]
    for t_s, t_e in _pairs():
        exact = segment_coefficients(sch, t_s, t_e, "exact")
        ddim = ddim_coefficients(sch, t_s, t_e, eta=1.0)
        assert max(abs(a - b) for a, b in zip(exact, ddim)) <= 1e-12, (t_s, t_e)


@pytest.mark.parametrize("name", SCHEDULES)
def test_one_segment_from_T_reproduces_forward_marginal(name):
    sch = SCHEDULES[name]
    ab_T = sch.alpha_bar(999)
    err_exact, err_paper = 0.0, 0.0
    for t in range(-1, 999):
        target = (math.sqrt(sch.alpha_bar(t)), 1.0 - sch.alpha_bar(t))
        for kind in ("exact", "paper"):
            pi, sigma, var = segment_coefficients(sch, 999, t, kind)
            got = (pi * math.sqrt(ab_T) + sigma, pi * pi * (1.0 - ab_T) + var)
            err = max(abs(g - r) for g, r in zip(got, target))
            if kind == "exact":
                err_exact = max(err_exact, err)
            else:
                err_paper = max(err_paper, err)
    assert err_exact <= 1e-12
    assert err_paper > 0.6  # the printed form breaks the marginals (0.63 / 0.96 and up)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("kind", ["exact", "paper"])
def test_single_step_is_the_posterior(name, kind):
    sch = SCHEDULES[name]
    for t in (0, 1, 2, 21, 500, 998, 999):
        got = segment_coefficients(sch, t, t - 1, kind)
        b, a, var = posterior_step(sch, t)
        assert max(abs(g - r) for g, r in zip(got, (b, a, var))) <= (0.0 if kind == "paper" else 1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
def test_full_jump_to_clean_data(name):
    pi, sigma, var = segment_coefficients(SCHEDULES[name], 999, -1, "exact")
    assert abs(pi) < 1e-14 and abs(sigma - 1.0) < 1e-12 and abs(var) < 1e-14


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("pair", list(TABLES["ldm"]))
def test_printed_and_correct_tables(name, pair):
    sch = SCHEDULES[name]
    pi_ref, sig_ok, sig_pr, var_ok, var_pr = TABLES[name][pair]
    c_s, c_e = pair[0] - 1, pair[1] - 1  # paper t -> 0-based c
    pi, sigma, var = segment_coefficients(sch, c_s, c_e, "exact")
    pi_p, sigma_p, var_p = segment_coefficients(sch, c_s, c_e, "paper")
    tol = 5.01e-7  # the tables print 6 decimals
    assert abs(pi - pi_ref) < tol and abs(pi_p - pi_ref) < tol
    assert abs(sigma - sig_ok) < tol and abs(var - var_ok) < tol
    assert abs(sigma_p - sig_pr) < tol and abs(var_p - var_pr) < tol


def test_ddim_eta_zero_contrast_numbers():
    # docs/method.md §2.6: DDIM eta=0 at 700->600 (1-indexed)
    for name, ref in {"ldm": (0.956163, 0.126504), "ddpm": (0.990431, 0.078206)}.items():
        pi, sigma, var = ddim_coefficients(SCHEDULES[name], 699, 599, eta=0.0)
        assert abs(pi - ref[0]) < 5.01e-7 and abs(sigma - ref[1]) < 5.01e-7 and var == 0.0


def test_official_grid_last_segment_error():
    # docs/method.md §2.6, the official grid's last segment (22->2): sqrt V 0.03948 / 0.08117, var ratio 3.9514
    sch = SCHEDULES["ldm"]
    pi, sig, var = segment_coefficients(sch, 21, 1, "exact")
    _, sig_p, var_p = segment_coefficients(sch, 21, 1, "paper")
    assert math.sqrt(var) == pytest.approx(0.03948, abs=5e-6)
    assert math.sqrt(var_p) == pytest.approx(0.08117, abs=5e-6)
    ab_s, ab_e = sch.alpha_bar(21), sch.alpha_bar(1)
    ratio = (pi * pi * (1 - ab_s) + var_p) / (pi * pi * (1 - ab_s) + var)
    assert ratio == pytest.approx(3.9514, abs=5e-5)
    assert pi * math.sqrt(ab_s) + sig_p - math.sqrt(ab_e) == pytest.approx(-1.25e-5, abs=5e-8)


def test_official_grid_and_nfe():
    assert aias_boundaries(1000, 48, 2) == OFFICIAL_GRID
    assert aias_boundaries(1000, 48, 2) == torch.linspace(999, 1, 49).long().tolist()
    sampler = build_sampler("aias", SCHEDULES["ldm"], steps=50)
    assert sampler.segments == 48 and sampler.nfe == 50 and sampler.boundaries == OFFICIAL_GRID
    assert [s.t_s for s in sampler.steps][-2:] == [1, 0] and sampler.steps[-1].t_e == -1
    # 24 of 48 segments end inside the official write-back window 250 < t_e < 750
    assert sum(250 < b < 750 for b in OFFICIAL_GRID[1:]) == 24


def test_coarse_to_fine_and_t_start_grids():
    b = aias_boundaries(1000, 48, 2, kind="coarse_to_fine")
    assert b[0] == 999 and b[-1] == 1 and len(b) == 49
    gaps = [x - y for x, y in zip(b[:-1], b[1:])]
    assert min(gaps) >= 1 and gaps[0] > gaps[-1]
    assert all(g1 >= g2 for g1, g2 in zip(gaps[:-1], gaps[1:]))  # never coarser at small t
    s = aias_boundaries(1000, 10, 2, t_start=600)
    assert s[0] == 600 and s[-1] == 1 and len(s) == 11
    assert aias_boundaries(1000, 5, 0)[-1] == -1  # no refinement: the last segment lands on clean data
    with pytest.raises(ValueError):
        aias_boundaries(1000, 48, 2, kind="log")
    with pytest.raises(ValueError):
        aias_boundaries(10, 20, 2)


def test_ddim_uniform_grid():
    assert ddim_timesteps(1000, 50) == list(range(1, 1000, 20))
    assert ddim_timesteps(1000, 50)[-1] == 981
    assert ddim_timesteps(1000, 1000) == list(range(1, 1000))
