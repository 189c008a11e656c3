"""Mask guidance shared by every sampler (mask = 1 is the anomaly region to generate).

A sampler calls two hooks per step: ``denoiser_input`` builds what the network sees at t_s, and
``after_step`` edits the new state at t_e (equations: docs/method.md §1.4, "Sampling with the mask").
Official FAST puts the FARM reconstruction, re-noised to t_s, into the masked part of the network input
only, and writes the noised normal background back for 250 < t_e < 750. The paper (its Eq. 6-8)
instead replaces the masked state by FARM(x_te) and writes the background back after every segment.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch

from ..schedule import NoiseSchedule
from .rng import as_batch_rng

WRITEBACK_MODES = ("window", "every", "before", "off")
FARM_MODES = ("input", "state", "off")
MEAN_FROM = ("state", "input")


PASTE_COLOURS = ("raw", "match")
PASTE_DEFAULT = "raw"  # the official FAST composite; docs/method.md §1.4 has what match changed


def paste(decoded: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
          colour: str = PASTE_DEFAULT) -> torch.Tensor:
    """Pixel-space composite of the decoded image into the normal one; equals ``image`` bit for bit where M = 0::

        raw:    out = D · M + x · (1 − M)
        match:  out = clamp(D + o, −1, 1) · M + x · (1 − M),   o_bc = Σ_{M=0} (x − D)_bc / Σ_{M=0} 1

    ``match`` (B×C×H×W tensors) removes the decoded image's mean colour offset o (per image and channel,
    measured where both are known: outside the mask) before pasting. Without it the region carries the
    autoencoder's and the backbone's colour cast against the untouched pixels around it (+14 grey levels in
    G and B on one demo brick backbone): a seam no real defect has. It is an option, not the default: on
    another backbone the seam was most of the generated defects' contrast, and removing it lowered the
    segmenter's anomaly IoU as often as it raised it (docs/method.md §1.4).
    A mask that covers the whole image has nothing to measure o on: o = 0 there."""
    if colour not in PASTE_COLOURS:
        raise ValueError(f"paste colour must be one of {', '.join(PASTE_COLOURS)}, got {colour!r}")
    mask = mask.to(dtype=image.dtype, device=image.device)
    decoded = decoded.to(image.dtype)
    if colour == "match":
        outside = 1.0 - mask
        offset = ((image - decoded) * outside).sum(dim=(2, 3), keepdim=True) / \
            outside.sum(dim=(2, 3), keepdim=True).clamp(min=1.0)
        decoded = (decoded + offset).clamp(-1.0, 1.0)
    return decoded * mask + image * (1.0 - mask)


class MaskGuidance:
    """Where the anomaly mask and the normal background enter a sampling run.

    mask: latent mask broadcastable to the state (B×1×h×w or 1×1×h×w), 1 = generate.
    z_bg: clean latent of the normal image; needed for any write-back and for an NDI start.
    writeback: "window" (lo < t_e < hi, official), "every" (paper), "before" (LDM / AnomalyDiffusion:
        blend q(z_bg, t_s) into the network input before each step; pair with mean_from="input" so the
        blended latent is the state the step continues from), "off".
    farm: callable ``farm(x, mask, t) -> x0_an``; farm_mode "input" (official) or "state" (paper);
        without a farm the FARM hooks are off.
    mean_from: which latent multiplies Pi in the update: the unmodified state (official) or the
        network input.
    """

    def __init__(self, mask: torch.Tensor, z_bg: torch.Tensor | None = None, writeback: str = "window",
                 window: tuple[int, int] = (250, 750), farm: Callable | None = None, farm_mode: str = "input",
                 mean_from: str = "state", schedule: NoiseSchedule | None = None):
        if writeback not in WRITEBACK_MODES:
            raise ValueError(f"unknown writeback '{writeback}' ({', '.join(WRITEBACK_MODES)})")
        if farm_mode not in FARM_MODES:
            raise ValueError(f"unknown farm_mode '{farm_mode}' ({', '.join(FARM_MODES)})")
        if mean_from not in MEAN_FROM:
            raise ValueError(f"unknown mean_from '{mean_from}' ({', '.join(MEAN_FROM)})")
        if writeback != "off" and z_bg is None:
            raise ValueError(f"writeback='{writeback}' needs the background latent z_bg")
        self.mask = mask
        self.z_bg = z_bg
        self.writeback = writeback
        self.window = (int(window[0]), int(window[1]))
        self.farm = farm
        self.farm_mode = farm_mode if farm is not None else "off"
        self.mean_from = mean_from
        self.schedule = None
        self._sqrt_ab: list[float] = []
        if schedule is not None:
            self._set_schedule(schedule)

    # --- presets ---------------------------------------------------------------------------------
    @classmethod
    def official(cls, mask, z_bg, farm=None, **kw) -> "MaskGuidance":
        """Official FAST code: FARM on the network input, windowed write-back, mean from the state."""
        return cls(mask, z_bg, writeback="window", farm=farm, farm_mode="input", mean_from="state", **kw)

    @classmethod
    def paper(cls, mask, z_bg, farm=None, **kw) -> "MaskGuidance":
        """FAST paper Eq. 6-8: after every segment, FARM replaces the masked state and the background is written back."""
        return cls(mask, z_bg, writeback="every", farm=farm, farm_mode="state", mean_from="state", **kw)

    # --- schedule binding ------------------------------------------------------------------------
    def _set_schedule(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule
        self._sqrt_ab = schedule.alphas_cumprod.sqrt().tolist()

    def bind(self, schedule: NoiseSchedule) -> "MaskGuidance":
        """A copy that knows the sampler's schedule (guidance never owns the model)."""
        if self.schedule is schedule:
            return self
        out = copy.copy(self)
        out._set_schedule(schedule)
        return out

    # --- helpers ---------------------------------------------------------------------------------
    def _need_schedule(self) -> None:
        if self.schedule is None:
            raise RuntimeError("MaskGuidance is not bound to a NoiseSchedule; call guidance.bind(schedule)")

    def _mask_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask.to(device=x.device, dtype=x.dtype)

    def _q(self, x0: torch.Tensor, t: int, rng, like: torch.Tensor) -> torch.Tensor:
        """Forward-noise x0 to step t with fresh per-sample noise shaped like the state."""
        self._need_schedule()
        rng = as_batch_rng(rng, like.shape[0])
        a = self._sqrt_ab[t]
        noise = rng.randn(like.shape[1:], device=like.device, dtype=like.dtype)
        return a * x0.to(device=like.device, dtype=like.dtype) + math.sqrt(max(1.0 - a * a, 0.0)) * noise

    def _farm(self, x: torch.Tensor, t: int) -> torch.Tensor:
        mask = self._mask_like(x)
        if mask.ndim == x.ndim and mask.shape[0] == 1 and x.shape[0] > 1:
            mask = mask.expand(x.shape[0], *mask.shape[1:])
        tvec = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
        return self.farm(x, mask, tvec)

    def writes_back(self, t_e: int) -> bool:
        """Whether the background is written back after a step that lands on t_e (never on clean data)."""
        if t_e < 0:
            return False
        if self.writeback == "every":
            return True
        if self.writeback == "window":
            lo, hi = self.window
            return lo < t_e < hi
        return False

    # --- hooks -----------------------------------------------------------------------------------
    def denoiser_input(self, x: torch.Tensor, t_s: int, rng) -> torch.Tensor:
        """The latent the network sees at t_s; only the masked region is changed by FARM."""
        out = x
        if self.writeback == "before":
            m = self._mask_like(x)
            out = m * out + (1.0 - m) * self._q(self.z_bg, t_s, rng, like=x)
        if self.farm_mode == "input":
            m = self._mask_like(x)
            x0_an = self._farm(out, t_s)
            out = (1.0 - m) * out + m * self._q(x0_an, t_s, rng, like=x)
        return out

    def after_step(self, x: torch.Tensor, t_e: int, rng) -> torch.Tensor:
        """Edit the state at t_e: paper-mode FARM replacement, then background write-back."""
        if t_e < 0:
            return x
        if self.farm_mode == "state":
            m = self._mask_like(x)
            x0_an = self._farm(x, t_e)
            x = (1.0 - m) * x + m * self._q(x0_an, t_e, rng, like=x)
        if self.writes_back(t_e):
            m = self._mask_like(x)
            x = (1.0 - m) * self._q(self.z_bg, t_e, rng, like=x) + m * x
        return x

    def prepare_x_T(self, shape, rng, t_start: int | None = None, device=None, dtype=None) -> torch.Tensor:
        """Initial state: pure noise, or the normal latent noised to t_start (SDEdit / NDI start)."""
        ref = self.z_bg if self.z_bg is not None else self.mask
        device = ref.device if device is None else device
        dtype = (ref.dtype if ref.is_floating_point() else torch.float32) if dtype is None else dtype
        rng = as_batch_rng(rng, int(shape[0]))
        if t_start is None:
            return rng.randn(tuple(shape)[1:], device=device, dtype=dtype)
        if self.z_bg is None:
            raise ValueError("starting from t_start needs the background latent z_bg")
        like = torch.empty(tuple(shape), device=device, dtype=dtype)
        return self._q(self.z_bg, int(t_start), rng, like=like)

    paste = staticmethod(paste)


def guided_eps(eps_u: torch.Tensor, eps_c: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance of one step's two predictions: ε̃ = ε_u + s · (ε_c − ε_u)."""
    return eps_u + scale * (eps_c - eps_u)


def classifier_free(eps_cond: Callable, eps_uncond: Callable, scale: float) -> Callable:
    """Two denoisers ``(x, t, **kw) -> ε`` as one guided denoiser, ``guided_eps(ε_u(x, t), ε_c(x, t), s)``.

    s = 1 is ``eps_cond`` itself (returned unchanged, one network call per step); s > 1 pushes each step
    further along what the condition changes against the unconditional (or negative) caption. Each
    denoiser keeps its own inputs (FAST's mask-conditioned adaptor, STAGE's branches), so the two run
    as two calls; ``ddim.make_denoiser`` batches the plain UNet's pair into one."""
    if scale == 1.0:
        return eps_cond

    def guided(x, t, **kw):  # kw: a two-branch denoiser's branch and mask (STAGE), passed to both
        return guided_eps(eps_uncond(x, t, **kw), eps_cond(x, t, **kw), scale)

    return guided
