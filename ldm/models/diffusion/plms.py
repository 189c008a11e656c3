"""CompVis-API adapter for PLMS (same interface as ``ldm.models.diffusion.ddim.DDIMSampler``; eta must be 0)."""
from __future__ import annotations

from .ddim import DDIMSampler as _CompVisDDIM
from .samplers import plms as _core_plms
from .samplers.grids import ddim_timesteps


class PLMSSampler(_CompVisDDIM):
    _name = "PLMSSampler"

    def _build_core(self, steps, discretize, eta):
        if eta != 0:
            raise ValueError(f"PLMSSampler: ddim_eta must be 0, got {eta}")
        ts = ddim_timesteps(self.ddpm_num_timesteps, steps, discretize)
        return _core_plms.PLMSSteps(self.schedule, timesteps=ts)

    def sample(self, S, batch_size, shape, conditioning=None, eta: float = 0., **kwargs):
        if eta != 0:
            raise ValueError(f"PLMSSampler: eta must be 0, got {eta}")
        return super().sample(S, batch_size, shape, conditioning=conditioning, eta=eta, **kwargs)
