"""Mask generation by textual inversion (GroundingAnomaly §5; AnomalyDiffusion's mask TI): a small
pixel-space DDPM on binary masks, conditioned through cross-attention on a learned token set per defect
type (``category+defect``). Sampling a defect's tokens from fresh noise gives new, varied masks of
that type; ``ldm.data.generated_masks.GeneratedMasks`` serves them as a ``MaskSource``
(``--mask_source generated``).

Masks are 1×S×S in {-1, 1} (S = ``image_size``); samples are thresholded at 0. By default the small
UNet trains together with the tokens (there is no pretrained mask model to invert into); with
``train_unet: false`` and a ``ckpt_path`` of a mask model trained on other defect types, only the new
tokens train -- textual inversion proper.

Artifacts: ``mask_ti-{N}.pt`` (the UNet and the tokens, plain tensors).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ldm.models.diffusion.artifacts import available_steps
from ldm.models.diffusion.ddpm import DDPM, freeze
from ldm.util import instantiate_from_config
from utils.errors import UserError

ARTIFACT_PREFIX = "mask_ti"


class MaskTokens(nn.Module):
    """``num_vectors_per_token`` learned vectors per name. Takes (and ignores) the text-TI keys main.py
    sets (``placeholder_strings``, ``initializer_words``), so ``--mvtec_path`` fills ``names``."""

    def __init__(self, names: Sequence[str], dim: int, num_vectors_per_token: int = 4, init_std: float = 1.0,
                 **ignored):
        super().__init__()
        names = [str(n) for n in (names or [])]
        if not names:
            raise UserError("the mask model needs its 'category+defect' names (personalization_config.params.names; "
                            "main.py sets them from --mvtec_path)")
        g = torch.Generator().manual_seed(0)
        self.string_to_param_dict = nn.ParameterDict({
            n: nn.Parameter(torch.randn(int(num_vectors_per_token), int(dim), generator=g) * init_std)
            for n in names})

    @property
    def names(self) -> list[str]:
        return list(self.string_to_param_dict.keys())

    def forward(self, names: Sequence[str]) -> torch.Tensor:
        rows = []
        for n in names:
            if n not in self.string_to_param_dict:
                raise UserError(f"the mask model has no token for '{n}'; it knows: {', '.join(self.names)}")
            rows.append(self.string_to_param_dict[n])
        return torch.stack(rows)


class MaskDiffusion(DDPM):
    def __init__(self, personalization_config, train_unet: bool = True, mask_key: str = "mask",
                 name_key: str = "name", threshold: float = 0.0, *args, **kwargs):
        kwargs.setdefault("channels", 1)
        kwargs.setdefault("use_ema", False)
        kwargs.setdefault("first_stage_key", mask_key)
        kwargs["conditioning_key"] = "crossattn"
        ckpt_path = kwargs.pop("ckpt_path", None)
        ignore_keys = kwargs.pop("ignore_keys", [])
        super().__init__(*args, **kwargs)
        from ldm.models.diffusion.grounding import _context_dim

        self.tokens = instantiate_from_config(personalization_config, dim=_context_dim(self.model.diffusion_model))
        self.train_unet = bool(train_unet)
        if not self.train_unet:
            freeze(self.model)
        self.mask_key, self.name_key, self.threshold = mask_key, name_key, float(threshold)
        if ckpt_path is not None:
            self.init_from_ckpt(ckpt_path, ignore_keys)

    # ------------------------------------------------------------------ model
    def get_input(self, batch, k):
        m = batch[k]
        if m.ndim == 3:
            m = m[:, None]
        m = m.to(self.device).float()
        s = int(self.image_size)
        if m.shape[-1] > s or m.shape[-2] > s:
            # max, not area: a 1-px scratch at 64 px covers under half of every 32-px cell, and area
            # resizing emptied 17 % of the demo's scratch masks and half of its crack masks
            m = F.adaptive_max_pool2d(m, (s, s))
        elif tuple(m.shape[-2:]) != (s, s):
            m = F.interpolate(m, size=(s, s), mode="nearest")
        return (m >= 0.5).float() * 2.0 - 1.0

    def apply_model(self, x_noisy, t, cond=None):
        if cond is None:
            raise ValueError("the mask model needs its defect tokens as conditioning")
        return self.model(x_noisy, t, c_crossattn=[cond])

    def shared_step(self, batch):
        x = self.get_input(batch, self.first_stage_key)
        c = self.tokens(list(batch[self.name_key]))
        return self.p_losses(x, self.sample_timesteps(x.shape[0]), cond=c)

    def trainable_parameters(self):
        params = list(self.tokens.parameters())
        if self.train_unet:
            params += list(self.model.parameters())
        if self.learn_logvar:
            params.append(self.logvar)
        return params

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample_masks(self, names: Sequence[str], rng=None, steps: int = 50, sampler: str = "ddim",
                     **sampler_kw) -> torch.Tensor:
        """B×S×S float {0, 1}: one mask per name, from the noise of ``rng`` (a BatchRNG / seeds)."""
        from ldm.models.diffusion.sampler_registry import build_sampler

        s = build_sampler(sampler, self.schedule, steps=None if sampler == "ddpm" else steps, **sampler_kw)
        c = self.tokens(list(names))
        shape = (len(names), self.channels, int(self.image_size), int(self.image_size))
        x = s.sample(self.denoiser(c), shape, rng=rng, device=self.device)
        return (x[:, 0] > self.threshold).float()

    @torch.no_grad()
    def log_images(self, batch, N: int = 8, sample: bool = True, ddim_steps: int = 50, **kwargs):
        from ldm.models.diffusion.samplers.rng import BatchRNG

        x = self.get_input(batch, self.first_stage_key)[:N]
        log = {"inputs": x.expand(-1, 3, -1, -1)}
        if sample:
            names = list(batch[self.name_key])[:x.shape[0]]
            m = self.sample_masks(names, BatchRNG(list(range(len(names)))), steps=ddim_steps)
            log["samples"] = (m[:, None] * 2 - 1).expand(-1, 3, -1, -1)
        return log

    # ------------------------------------------------------------------ artifacts
    @classmethod
    def artifact_steps(cls, dirpath) -> list[int]:
        return available_steps(dirpath, ARTIFACT_PREFIX)

    def artifact_state(self) -> dict:
        return {k: v.detach().cpu() for k, v in self.state_dict().items() if k.startswith(("model.", "tokens."))}

    def export_artifacts(self, dirpath, step: int) -> list[Path]:
        from utils.atomic import torch_save_atomic

        path = Path(dirpath) / f"{ARTIFACT_PREFIX}-{step}.pt"
        torch_save_atomic(self.artifact_state(), path)
        return [path]

    def load_artifacts(self, dirpath, step: int) -> None:
        from utils.safe_load import extract_state_dict, safe_load

        steps = self.artifact_steps(dirpath)
        if step not in steps:
            raise UserError(f"no {ARTIFACT_PREFIX}-{step}.pt in {dirpath}; available: {steps or 'none'}")
        sd = extract_state_dict(safe_load(Path(dirpath) / f"{ARTIFACT_PREFIX}-{step}.pt"))
        own = self.artifact_state()
        if set(sd) != set(own):
            missing = sorted(set(own) - set(sd))[:3]
            extra = sorted(set(sd) - set(own))[:3]
            raise UserError(f"{dirpath}/{ARTIFACT_PREFIX}-{step}.pt does not fit this mask model (missing "
                            f"{missing}, unexpected {extra}); build it with the run's config and names")
        self.load_state_dict(sd, strict=False)


# ---------------------------------------------------------------------------------------- diversity
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def mask_diversity(generated: Sequence[np.ndarray], real: Sequence[np.ndarray]) -> dict:
    """How varied generated masks are, and how far from copies of the real ones (masks H×W, same size).

    ``pairwise_iou_*``: mean IoU over all pairs (lower = more varied); ``nearest_real_iou``: mean over
    generated masks of the best IoU with any real mask (1 = a copy); ``copies``: share of generated
    masks with nearest-real IoU ≥ 0.95; ``unique``: share of distinct generated masks; ``area_*``: mean
    foreground fraction.
    """
    gen = [np.asarray(m) > 0.5 for m in generated]
    ref = [np.asarray(m) > 0.5 for m in real]
    if not gen or not ref:
        raise UserError("mask_diversity needs at least one generated and one real mask")

    def pairwise(ms):
        vals = [_iou(ms[i], ms[j]) for i in range(len(ms)) for j in range(i + 1, len(ms))]
        return float(np.mean(vals)) if vals else None

    nearest = [max(_iou(g, r) for r in ref) for g in gen]
    unique = len({g.tobytes() for g in gen}) / len(gen)
    return {"n_generated": len(gen), "n_real": len(ref), "pairwise_iou_generated": pairwise(gen),
            "pairwise_iou_real": pairwise(ref), "nearest_real_iou": float(np.mean(nearest)),
            "copies": float(np.mean([v >= 0.95 for v in nearest])), "unique": unique,
            "area_generated": float(np.mean([g.mean() for g in gen])),
            "area_real": float(np.mean([r.mean() for r in ref]))}


def available_artifact_steps(dirpath: str | os.PathLike) -> list[int]:
    return available_steps(dirpath, ARTIFACT_PREFIX)


def build_mask_model(config, device="cpu"):
    """The mask model of a run config (path or OmegaConf), random weights, eval mode."""
    from omegaconf import OmegaConf

    if isinstance(config, (str, os.PathLike)):
        config = OmegaConf.load(config)
    config = OmegaConf.create(OmegaConf.to_container(config, resolve=True))
    if "model" in config:
        config = config.model
    config.params.pop("ckpt_path", None)
    return instantiate_from_config(config).to(device).eval()


def load_mask_run(pt_path, weight_idx: Optional[int] = None, config=None, device="cpu") -> tuple[MaskDiffusion, int]:
    """(model with artifacts, step) of a mask-TI run folder (``--pt_path`` = ``<run>/checkpoints``)."""
    from utils.run_folder import find_run_config

    pt_path = Path(pt_path)
    if not pt_path.is_dir():
        raise UserError(f"mask model folder not found: {pt_path}")
    model = build_mask_model(find_run_config(pt_path, config), device)
    if not isinstance(model, MaskDiffusion):
        raise UserError(f"{pt_path} is not a mask-TI run (model {type(model).__name__})")
    steps = model.artifact_steps(pt_path)
    if not steps:
        raise UserError(f"no {ARTIFACT_PREFIX}-<N>.pt artifacts in {pt_path}")
    step = steps[-1] if weight_idx is None else int(weight_idx)
    model.load_artifacts(pt_path, step)
    return model.to(device).eval(), step
