"""STAGE sampling (docs/method.md §3, "STAGE"): Graded Diffusion with Explicit Mask Alignment and Anomaly Inference.

Two states share one network: the full latent ``x`` (anomaly-aware branch) and ``s``, an anomaly on an
empty (zero) background (anomaly-only branch). Both start from the same x_T. With M the binary latent
mask, z_bg the clean normal latent and ``q(y, t)`` a forward noising with fresh noise, a step t_s → t_e
(kernel ``x_te = Π·x + Σ·x̂0 + √V·z``) is

* anomaly-only (t_s inside a window, default 700–800 and 300–400, both ends inclusive)::

      x̂0 = M ⊙ x̂0_net(s)                         # AIF on a zero background, adapter input M
      s  ← Π·s + Σ·x̂0 + √V·z
      x  ← M ⊙ s + (1 − M) ⊙ q(z_bg, t_e)
      s  ← M ⊙ s + (1 − M) ⊙ q(0, t_e)

* anomaly-aware (elsewhere), with the explicit-alignment mask M_t = α·(1 − M) + M::

      x̂0 = M_t ⊙ x̂0_net(x) + (1 − M_t) ⊙ z_bg     # AIF, adapter input M_t
      x  ← Π·x + Σ·x̂0 + √V·z
      s  ← M ⊙ x + (1 − M) ⊙ q(0, t_e)
      x  ← M_t ⊙ x + (1 − M_t) ⊙ q(z_bg, t_e)

α = clip((t − 200)/800, 0, 1) (``linear``; ``cosine`` is the unused official ``EMA_cos``:
0.5·(1 + cos π(1 − u)) and M_t binarised at 0.5). The official loop updates the mask *after* each
step with that step's t, so the step at t_s uses M evaluated at t_s + 1 (all ones at t_s = 999);
``mask_offset`` = 1 keeps that. On the clean end (t_e = −1) the official loop writes back
``q(·, 0)`` (``clamp(t − 1, 0)``); ``clean_final=True`` writes the clean latent instead. Where the
official code noises the one-channel mask tensor (noise shared by the latent channels), the zero
background here gets independent noise per channel, as the state's own forward marginal has.

Grids. ``steps=None`` (or T) is the official loop: plain ancestral DDPM over every t with the CompVis
posterior coefficients, 1000 network calls. ``steps=K < T`` runs the same two-branch schedule on K
coarse segments, each jumping with the exact closed-form posterior q(x_te | x_ts, x̂0)
(``kernels.segment_coefficients``) and ending on the clean data, so K network calls:

* ``grid="aligned"`` (default): the window edges are segment boundaries. A window [lo, hi] covers the
  fine steps t = hi … lo, i.e. the state-time interval hi → lo − 1, so the boundaries hi and lo − 1
  are always on the grid and no rounding happens. The K segments are shared among the intervals
  (aware / only / aware / …) one at a time, each extra one to the interval whose segments are
  currently longest (ties: the earlier interval); every interval gets at least one, so K must be at
  least their number (5 for the default windows). Inside an interval boundaries are
  ``floor(linspace)``. Default windows: K = 50 → 10 + 5 + 15 + 5 + 15 segments (≈20 steps each,
  10 anomaly-only calls); K = 10 → 2 + 1 + 3 + 1 + 3 (2 anomaly-only calls).
* ``grid="uniform"``: ``floor(linspace(T−1, −1, K+1))``; a segment runs the anomaly-only branch when
  its start t_s lies in a window, i.e. each window is rounded to the segments that start inside it.

Which loop is which. ``steps=None`` (``--sampler ddpm``) is the official code's loop; ``steps=K``
(``--sampler stage --steps K``, "STAGE-K") is this project's accelerated variant, not in the official
code. ``paste`` is carried for :meth:`STAGE.generate` (a pixel-space choice, not used by the loop):
None leaves it to the model (official: no paste), True / False override it per sampler, so the
generation path can select it through the model's ``make_sampler`` options.

The denoiser takes the branch and the adapter's mask::

    denoiser(x, t, branch="aware" | "only", mask=B×1×h×w) -> eps_hat

and the run needs a guidance object with ``mask`` (binary latent mask) and ``z_bg`` (normal latent),
e.g. ``MaskGuidance(mask, z_bg, writeback="off")``; its write-back / FARM hooks are not used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from tqdm.auto import tqdm

from utils.errors import UserError

from ..schedule import NoiseSchedule
from .base import Sampler, Step
from .kernels import segment_coefficients

BRANCHES = ("aware", "only")
MASK_SCHEDULES = ("linear", "cosine")
STAGE_GRIDS = ("aligned", "uniform")
OFFICIAL_WINDOWS = ((700, 800), (300, 400))


# ----------------------------------------------------------------------------- explicit mask alignment
def mask_alpha(t, total: int = 1000, shrink_end: int = 200, kind: str = "linear"):
    """α_t of the explicit mask alignment (0-based t; float for an int, tensor for a tensor).

    ``linear``: clip((t − shrink_end)/(total − shrink_end), 0, 1) (official ``EMA``);
    ``cosine``: 0.5·(1 + cos(π(1 − u))) with u that same clipped ramp (official ``EMA_cos``).
    """
    if kind not in MASK_SCHEDULES:
        raise UserError(f"unknown mask_schedule '{kind}' ({', '.join(MASK_SCHEDULES)})")
    if not 0 <= shrink_end < total:
        raise UserError(f"need 0 <= shrink_end < total, got shrink_end={shrink_end}, total={total}")
    if torch.is_tensor(t):
        u = ((t.float() - shrink_end) / (total - shrink_end)).clamp(0.0, 1.0)
        return u if kind == "linear" else 0.5 * (1.0 + torch.cos(math.pi * (1.0 - u)))
    u = min(max((float(t) - shrink_end) / (total - shrink_end), 0.0), 1.0)
    return u if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * (1.0 - u)))


def explicit_mask(mask: torch.Tensor, t, total: int = 1000, shrink_end: int = 200,
                  kind: str = "linear") -> torch.Tensor:
    """M_t = α_t·(1 − M) + M for a binary mask M (B×1×h×w); ``t`` an int or a B-long tensor.

    Soft for ``linear`` (the value outside M is α_t); ``cosine`` is binarised at 0.5, as the official code.
    """
    alpha = mask_alpha(t, total, shrink_end, kind)
    if torch.is_tensor(alpha):
        alpha = alpha.to(device=mask.device, dtype=mask.dtype).view(-1, *([1] * (mask.ndim - 1)))
    out = alpha * (1.0 - mask) + mask
    return (out > 0.5).to(mask.dtype) if kind == "cosine" else out


def parse_paste(value) -> bool | None:
    """``paste`` as given in a config or an options dict: None (the model decides), a bool, or one of
    true/false/on/off/yes/no/1/0 (a string ``"false"`` must not turn the paste on)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in ("true", "on", "yes", "1"):
            return True
        if word in ("false", "off", "no", "0"):
            return False
    raise UserError(f"paste must be true or false, got {value!r}")


def in_windows(t: int, windows) -> bool:
    """Whether step t runs the anomaly-only branch (windows are inclusive [lo, hi] pairs)."""
    return any(lo <= t <= hi for lo, hi in windows)


def _check_windows(windows, num_timesteps: int) -> tuple[tuple[int, int], ...]:
    out = []
    for w in windows:
        lo, hi = (int(v) for v in w)
        if not 0 <= lo <= hi <= num_timesteps - 1:
            raise UserError(f"STAGE window {tuple(w)} must satisfy 0 <= lo <= hi <= {num_timesteps - 1}")
        out.append((lo, hi))
    out.sort(key=lambda w: -w[1])
    for (lo_a, _), (_, hi_b) in zip(out, out[1:]):
        if hi_b >= lo_a - 1:
            raise UserError(f"STAGE windows must be disjoint and not adjacent, got {list(windows)}")
    return tuple(out)


# ----------------------------------------------------------------------------- grids
def branch_intervals(top: int, windows) -> list[tuple[int, int, str]]:
    """The state-time intervals (start, end, branch) from ``top`` down to −1 (clean data)."""
    points = [(top, "aware")]
    for lo, hi in windows:  # descending
        if lo > top:
            continue
        points.append((min(hi, top), "only"))
        points.append((lo - 1, "aware"))
    out = []
    edges = [p for p, _ in points] + [-1]
    for (start, branch), end in zip(points, edges[1:]):
        if start > end:
            out.append((start, end, branch))
    return out


def _allocate(lengths: Sequence[int], k: int) -> list[int]:
    counts = [1] * len(lengths)
    for _ in range(k - len(lengths)):
        best = max((i for i in range(len(lengths)) if counts[i] < lengths[i]),
                   key=lambda i: (lengths[i] / counts[i], -i))
        counts[best] += 1
    return counts


def stage_boundaries(num_timesteps: int, steps: int, windows=OFFICIAL_WINDOWS, grid: str = "aligned",
                     t_start: int | None = None) -> list[int]:
    """K + 1 descending segment boundaries from t_start (default T − 1) to −1 (see the module notes)."""
    top = num_timesteps - 1 if t_start is None else int(t_start)
    if not 0 <= top <= num_timesteps - 1:
        raise UserError(f"t_start must lie in [0, {num_timesteps - 1}], got {top}")
    k = int(steps)
    if not 1 <= k <= top + 1:
        raise UserError(f"STAGE steps must lie in [1, {top + 1}], got {k}")
    if grid == "uniform":
        b = torch.linspace(top, -1, k + 1, dtype=torch.float64).floor().long().tolist()
        return b
    if grid != "aligned":
        raise UserError(f"unknown STAGE grid '{grid}' ({', '.join(STAGE_GRIDS)})")
    intervals = branch_intervals(top, _check_windows(windows, num_timesteps))
    if k < len(intervals):
        raise UserError(f"grid='aligned' needs steps >= {len(intervals)} (one segment per branch interval "
                        f"{[(a, b) for a, b, _ in intervals]}), got {k}; use more steps or grid='uniform'")
    counts = _allocate([a - b for a, b, _ in intervals], k)
    out = [top]
    for (a, b, _), n in zip(intervals, counts):
        pts = torch.linspace(a, b, n + 1, dtype=torch.float64).floor().long().tolist()
        out += pts[1:]
    return out


# ----------------------------------------------------------------------------- sampler
@dataclass(frozen=True)
class STAGEStep(Step):
    """A ``Step`` plus the branch that runs it."""

    branch: str = "aware"


class STAGESampler(Sampler):
    """The two-branch STAGE loop on the shared (Π, Σ, V) step machinery (see the module notes)."""

    def __init__(self, schedule: NoiseSchedule, steps: int | None = None, windows=OFFICIAL_WINDOWS,
                 grid: str = "aligned", kernel: str = "exact", mask_schedule: str = "linear",
                 shrink_end: int = 200, mask_offset: int = 1, clean_final: bool = False,
                 t_start: int | None = None, clip_x0: float | None = None, paste: bool | str | None = None):
        super().__init__(schedule, clip_x0=clip_x0)
        self.paste = parse_paste(paste)
        T = schedule.num_timesteps
        self.windows = _check_windows(windows, T)
        self.mask_schedule = mask_schedule
        self.shrink_end = int(shrink_end)
        mask_alpha(T - 1, T, self.shrink_end, mask_schedule)  # validates both
        self.mask_offset = int(mask_offset)
        self.clean_final = bool(clean_final)
        self.kernel = kernel
        self.grid = grid
        self.t_start = None if t_start is None else int(t_start)
        top = T - 1 if self.t_start is None else self.t_start
        if not 0 <= top <= T - 1:
            raise UserError(f"t_start must lie in [0, {T - 1}], got {top}")
        self.official = steps is None or int(steps) == top + 1
        if self.official:
            bufs = schedule.buffers()
            coef_b = bufs["posterior_mean_coef2"].tolist()
            coef_a = bufs["posterior_mean_coef1"].tolist()
            var = bufs["posterior_variance"].tolist()
            self.boundaries = list(range(top, -2, -1))
            self.steps = [STAGEStep(t, t - 1, coef_b[t], coef_a[t], self._std(var[t]) if t > 0 else 0.0,
                                    branch=self.branch_at(t)) for t in range(top, -1, -1)]
        else:
            self.boundaries = stage_boundaries(T, int(steps), self.windows, grid, self.t_start)
            self.steps = []
            for t_s, t_e in zip(self.boundaries[:-1], self.boundaries[1:]):
                pi, sigma, v = segment_coefficients(schedule, t_s, t_e, kind=kernel)
                self.steps.append(STAGEStep(t_s, t_e, pi, sigma, self._std(v), branch=self.branch_at(t_s)))

    def __repr__(self) -> str:
        kind = "ddpm" if self.official else f"{self.grid}/{self.kernel}"
        paste = "" if self.paste is None else f", paste={self.paste}"
        return (f"STAGESampler(nfe={self.nfe}, grid={kind}, windows={list(self.windows)}, "
                f"mask_schedule='{self.mask_schedule}', t_start={self.t_start}{paste})")

    # --- schedule pieces ---------------------------------------------------------------------------
    def branch_at(self, t_s: int) -> str:
        return "only" if in_windows(int(t_s), self.windows) else "aware"

    def mask_at(self, mask: torch.Tensor, t_s: int) -> torch.Tensor:
        """M_t used by an anomaly-aware step that starts at t_s."""
        return explicit_mask(mask, int(t_s) + self.mask_offset, self.schedule.num_timesteps, self.shrink_end,
                             self.mask_schedule)

    def _noised(self, x0: torch.Tensor, t_e: int, rng, like: torch.Tensor) -> torch.Tensor:
        """q(x0, t_e) with fresh per-sample noise; t_e = −1 is q(x0, 0) (official) or x0 (clean_final)."""
        if t_e < 0:
            if self.clean_final:
                return x0
            t_e = 0
        a = self._sqrt_ab[t_e]
        noise = rng.randn(like.shape[1:], device=like.device, dtype=like.dtype)
        return a * x0 + math.sqrt(max(1.0 - a * a, 0.0)) * noise

    # --- the loop ---------------------------------------------------------------------------------
    def _run(self, denoiser, x, rng, guidance, progress, callback) -> torch.Tensor:
        if guidance is None or getattr(guidance, "z_bg", None) is None:
            raise ValueError("STAGE sampling needs the latent mask and the normal latent z_bg "
                             "(pass guidance=MaskGuidance(mask, z_bg, writeback='off'))")
        m = guidance.mask.to(device=x.device, dtype=x.dtype)
        if m.shape[0] != x.shape[0]:
            m = m.expand(x.shape[0], *m.shape[1:])
        z_bg = guidance.z_bg.to(device=x.device, dtype=x.dtype)
        zeros = torch.zeros_like(x)
        s = x.clone()  # the anomaly-only state starts from the same x_T (official)
        for i, step in enumerate(tqdm(self.steps, disable=not progress, desc=type(self).__name__)):
            bg = self._noised(z_bg, step.t_e, rng, x)
            empty = self._noised(zeros, step.t_e, rng, x)
            if step.branch == "only":
                _, x0 = self._predict(_bind(denoiser, "only", m), s, step.t_s)
                x0 = m * x0
                s = self._transition(s, x0, step.pi, step.sigma, step.std, rng)
                x = m * s + (1.0 - m) * bg
                s = m * s + (1.0 - m) * empty
            else:
                m_t = self.mask_at(m, step.t_s)
                _, x0 = self._predict(_bind(denoiser, "aware", m_t), x, step.t_s)
                x0 = m_t * x0 + (1.0 - m_t) * z_bg
                x = self._transition(x, x0, step.pi, step.sigma, step.std, rng)
                s = m * x + (1.0 - m) * empty
                x = m_t * x + (1.0 - m_t) * bg
            if callback is not None:
                callback(i, step.t_e, x, x0)
        return x


def _bind(denoiser, branch: str, mask: torch.Tensor):
    def eps_fn(x, t):
        return denoiser(x, t, branch=branch, mask=mask)
    return eps_fn
