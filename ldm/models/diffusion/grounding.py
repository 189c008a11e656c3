"""GroundingAnomaly on the LDM backbone (docs/method.md §4, "GroundingAnomaly"; arXiv 2604.08301), as a
``LatentDiffusion`` subclass plus the modules of :mod:`ldm.modules.grounding`.

- **SCM** (``self.scm``): semantic map of learned product / anomaly tokens → conv encoder (ConvNeXt-Tiny
  for the full-size model, a small conv net for tiny configs) → ``grid²`` conditioning tokens in the
  text-conditioning (BERT) space.
- **GSM** (``self.gsm``): gated self-attention over [visual tokens, conditioning tokens] in every
  transformer block of the frozen UNet, ``v + tanh(γ)·attn(...)`` with γ = 0 at the start.
- **LoRA** (``self.lora``): low-rank updates of the attention projections (forward hooks), the only
  change to the backbone's function; its weights stay frozen and keep their checkpoint keys.
- **MNT**: each training batch mixes normal images (empty anomaly map) and anomalies at ``mnt_ratio``
  (:mod:`ldm.models.diffusion.mnt`, batches from :mod:`ldm.data.mixed`).
- **NDI**: sampling starts from the normal image's latent noised to ``ndi_t_start`` (AIAS, DDIM, PLMS,
  DDPM); AIAS spends proportionally fewer network calls (``ndi_scale_steps``).

Training step: ``x_t = q(z, t, ε)``, ``ε̂ = UNet_LoRA,GSM(x_t, t, [text, SCM(map)])``, loss
``l_simple_weight · mean(w ⊙ (ε − ε̂)²)`` with ``w = 1 + (mask_loss_weight − 1)·M`` (1 everywhere by
default). Trainable: SCM, GSM, LoRA and the anomaly text embeddings (when a personalization_config is
set); UNet, autoencoder and text encoder are frozen.

Generation: ``generate(images, masks, captions, names, sampler, rng)`` conditions on the semantic map of
the given masks (``names[i]`` a ``category+defect`` name, or a list of names for a multi-label mask),
optionally writes the noised background back in latent space, and pastes the normal image's pixels
outside the mask exactly. Artifacts: ``scm-{N}.pt``, ``gsm-{N}.pt``, ``lora-{N}.pt`` (+ embeddings).

Ablations (the paper's, as options of one model):

- ``scm_config: {binary_map: true}`` -- w/o semantic map: one shared learned anomaly token inside every
  mask, whatever its defect type (``SpatialConditioning``); the encoder is unchanged.
- ``gsm: false`` -- w/o GSM: no gated self-attention; the SCM tokens stay appended to the text context,
  so the backbone's cross-attention (attn2) attends to them. No ``gsm.`` keys, no ``gsm-{N}.pt``.
- ``make_sampler(..., ndi=False)`` (``generate_with_mask.py --ndi off``) -- w/o NDI: sampling starts
  from pure noise at t = T−1 with the full step budget.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ldm.models.diffusion.mnt import mix_batch, normal_count
from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.models.diffusion.latent_mask import latent_mask
from ldm.models.diffusion.masked import MaskedLatentDiffusion
from ldm.modules.grounding import SpatialConditioning, install_gsm, install_lora
from ldm.util import default
from utils.errors import UserError


def _names_of(personalization_config) -> Optional[list[str]]:
    if personalization_config is None:
        return None
    params = personalization_config.get("params") or {}
    names = params.get("names")
    if names is None:
        return None
    from ldm.modules.embedding_manager import _read_names

    return _read_names(names if isinstance(names, str) else list(names))


def _init_word_of(personalization_config) -> Optional[str]:
    if personalization_config is None:
        return None
    words = (personalization_config.get("params") or {}).get("initializer_words") or []
    return str(words[0]) if len(words) else None


class GroundingAnomaly(MaskedLatentDiffusion):
    ARTIFACT_MODULES = (("scm", "scm"), ("gsm", "gsm"), ("lora", "lora"))
    guidance_options = ("writeback", "paste", "farm_mode")  # farm_mode: FAST's, accepted and ignored (no FARM)

    def __init__(self, scm_config: Optional[dict] = None, scm_names: Optional[Sequence[str]] = None,
                 gsm: bool = True, gsm_feed_forward: bool = True, lora_rank: int = 4,
                 lora_alpha: Optional[float] = None, lora_targets: Sequence[str] = ("attn1", "attn2"),
                 lora_dropout: float = 0.0,
                 mnt_ratio: float = 0.5, mask_loss_weight: float = 1.0, ndi_t_start: Optional[int] = 750,
                 ndi_scale_steps: bool = True, writeback: str = "off", paste: bool = True,
                 normal_key: str = "normal_image",
                 normal_caption_key: str = "normal_caption", *args, **kwargs):
        if kwargs.get("unfreeze_model"):
            raise UserError("GroundingAnomaly keeps the backbone frozen (LoRA is its only update): drop "
                            "unfreeze_model or set it to false")
        kwargs["unfreeze_model"] = False
        pc = kwargs.get("personalization_config")
        super().__init__(*args, **kwargs)
        names = [str(n) for n in scm_names] if scm_names else _names_of(pc)
        if not names:
            raise UserError("GroundingAnomaly needs its 'category+defect' names: set model.params.scm_names or "
                            "personalization_config.params.names (main.py sets them from --mvtec_path)")
        unet = self.model.diffusion_model
        context_dim = getattr(unet, "context_dim", None) or _context_dim(unet)
        scm = dict(scm_config or {})
        scm.setdefault("token_dim", self._text_token_dim() or context_dim)
        self.scm = SpatialConditioning(names, context_dim=context_dim, **scm)
        self._anomaly_init_word = _init_word_of(pc)
        self.gsm = install_gsm(unet, context_dim, self.scm.n_tokens, feed_forward=gsm_feed_forward) if gsm else None
        self.lora_rank = int(lora_rank)
        self.lora = None
        if self.lora_rank > 0:
            self.lora, self._lora_handles = install_lora(unet, self.lora_rank, lora_alpha, tuple(lora_targets),
                                                         dropout=lora_dropout)
        self.mnt_ratio = float(mnt_ratio)
        normal_count(1, self.mnt_ratio)  # validate
        self.mask_loss_weight = float(mask_loss_weight)
        self.ndi_t_start = None if ndi_t_start is None else int(ndi_t_start)
        if self.ndi_t_start is not None and not 0 <= self.ndi_t_start < self.num_timesteps:
            raise UserError(f"ndi_t_start must lie in [0, {self.num_timesteps - 1}] (or null), got {ndi_t_start}")
        self.ndi_scale_steps = bool(ndi_scale_steps)
        self.writeback = writeback
        self.paste = bool(paste)
        self.normal_key = normal_key
        self.normal_caption_key = normal_caption_key
        self.init_scm_tokens()
        self.load_pending_checkpoint()

    # ------------------------------------------------------------------ set-up
    def _text_token_dim(self) -> Optional[int]:
        emb = getattr(getattr(self.cond_stage_model, "transformer", None), "token_emb", None)
        return int(emb.embedding_dim) if emb is not None else None

    @torch.no_grad()
    def init_scm_tokens(self) -> list[str]:
        """Product tokens from their category word, anomaly tokens from the init word, taken from the
        text encoder's word embeddings when the widths agree and the word is one wordpiece."""
        model = self.cond_stage_model
        tok = getattr(getattr(model, "tknz_fn", None), "tokenizer", None)
        emb = getattr(getattr(model, "transformer", None), "token_emb", None)
        if tok is None or emb is None or emb.embedding_dim != self.scm.token_dim:
            return []

        def lookup(word: str):
            pieces = tok.tokenize(word)
            if len(pieces) != 1:
                return None
            tid = tok.convert_tokens_to_ids(pieces[0])
            if tid == tok.unk_token_id:
                return None
            return emb.weight[tid].detach()

        words = {n: self._anomaly_init_word for n in self.scm.names} if self._anomaly_init_word else {}
        return self.scm.init_from_words(lookup, words)

    def init_from_ckpt(self, path, ignore_keys=(), only_model: bool = False):
        missing, unexpected = super().init_from_ckpt(path, ignore_keys, only_model)
        if hasattr(self, "scm") and any(k.startswith("scm.") for k in missing):
            done = self.init_scm_tokens()  # a backbone checkpoint: start the tokens from its word embeddings
            if done:
                print(f"Initialised SCM tokens from the loaded text encoder: {', '.join(done)}")
        return missing, unexpected

    # ------------------------------------------------------------------ conditioning
    def grounding_tokens(self, masks: torch.Tensor, names: Sequence) -> torch.Tensor:
        """SCM tokens (B×grid²×context_dim) for masks (B×H×W or B×1×H×W) and per-sample names."""
        labels, products, anomalies = self.scm.labels_from_masks(masks.to(self.device), list(names))
        return self.scm(labels, products, anomalies)

    def apply_model(self, x_noisy, t, cond, return_ids: bool = False, grounding: Optional[torch.Tensor] = None):
        """ε̂ of the UNet with LoRA and GSM; ``grounding`` (the SCM tokens) ride behind the text context
        (GSM splits them off; without GSM the cross-attention sees text and SCM tokens alike)."""
        if grounding is None:
            raise ValueError("GroundingAnomaly.apply_model needs the SCM conditioning tokens (grounding=...)")
        if isinstance(cond, dict):
            cond = cond.get("c_crossattn")
        if isinstance(cond, (list, tuple)):
            cond = torch.cat(list(cond), 1)
        if not torch.is_tensor(cond):
            raise ValueError("GroundingAnomaly.apply_model needs the encoded text conditioning (B×L×D)")
        context = torch.cat([cond, grounding.to(cond.dtype)], dim=1)
        return LatentDiffusion.apply_model(self, x_noisy, t, context)

    def denoiser(self, cond=None, grounding: Optional[torch.Tensor] = None):
        def eps_fn(x, t):
            return self.apply_model(x, t, cond, grounding=grounding)
        return eps_fn

    # ------------------------------------------------------------------ training
    def mixed_batch(self, batch: dict) -> dict:
        """MNT: the batch with ``normal_count`` normal rows for this step (``ldm.models.diffusion.mnt``)."""
        n = normal_count(int(batch[self.first_stage_key].shape[0]), self.mnt_ratio, int(self.global_step))
        return mix_batch(batch, n, self.first_stage_key, self.mask_key, self.cond_stage_key, self.normal_key,
                         self.normal_caption_key)

    def shared_step(self, batch, **kwargs):
        if self.mask_key not in batch or self.name_key not in batch:
            raise KeyError(f"GroundingAnomaly needs the batch keys '{self.mask_key}' and '{self.name_key}'")
        batch = self.mixed_batch(batch)
        z, c = self.get_input(batch, self.first_stage_key)
        masks = batch[self.mask_key].to(self.device).float()
        return self(z, c, masks=masks, names=list(batch[self.name_key]))

    def p_losses(self, x_start, cond, t, noise=None, masks=None, names=None):
        if masks is None or names is None:
            raise ValueError("GroundingAnomaly.p_losses needs the pixel masks and the names")
        noise = default(noise, lambda: self.training_noise(x_start))
        grounding = self.grounding_tokens(masks, names)
        x_noisy = self.q_sample(x_start, t, noise)
        eps = self.apply_model(x_noisy, t, cond, grounding=grounding)
        weight = None
        if self.mask_loss_weight != 1.0:
            m = latent_mask(masks, x_start.shape[-2:], self.mask_threshold).to(x_start)
            weight = (1.0 + (self.mask_loss_weight - 1.0) * m).expand_as(eps)
        loss, loss_dict = self.loss_from_prediction(eps, self.training_target(x_start, noise), t, weight_map=weight)
        prefix = "train" if self.training else "val"
        if self.gsm is not None:
            loss_dict[f"{prefix}/gate_attn"] = torch.stack([torch.tanh(f.alpha_attn) for f in self.gsm]).abs().mean()
        return self.add_embedding_regulariser(loss, loss_dict)

    def trainable_parameters(self):
        params = super().trainable_parameters()
        params += list(self.scm.parameters())
        for module in (self.gsm, self.lora):
            if module is not None:
                params += list(module.parameters())
        return params

    # ------------------------------------------------------------------ generation
    def sampler_for(self, name: str, steps: Optional[int], opts: dict):
        """NDI: the sampler starts at ``t_start`` (default: the model's ``ndi_t_start``; ``ndi=False``
        starts from pure noise). With ``ndi_scale_steps`` AIAS spends
        ``ceil((steps − refine)·(t_start + 1)/T)`` segments, the share of the full grid below t_start."""
        ndi = bool(opts.pop("ndi", True))
        if not ndi and opts.get("t_start") is not None:
            raise UserError(f"ndi=False starts from pure noise: it cannot be combined with t_start={opts['t_start']}")
        if opts.get("t_start") is None:
            opts["t_start"] = self.ndi_t_start if ndi else None
        t_start = opts["t_start"]
        if name == "aias" and steps is not None and t_start is not None and self.ndi_scale_steps:
            refine = int(opts.get("refine_steps", 2))
            segments = max(1, math.ceil((int(steps) - refine) * (int(t_start) + 1) / self.num_timesteps))
            steps = segments + refine
        return super().sampler_for(name, steps, opts)

    def generation_region(self, masks: torch.Tensor) -> torch.Tensor:
        """A multi-label mask (values k = 1..K) generates wherever it is > 0.5."""
        return (masks > 0.5).float()

    def generation_conditioning(self, captions: list, names, masks: torch.Tensor) -> dict:
        """``{"text": encoded captions, "grounding": SCM tokens of the masks}``. ``names[i]``: the
        ``category+defect`` name of mask i, or a list of names for a multi-label mask (its text
        embedding is its first name's)."""
        if names is None:
            raise UserError("GroundingAnomaly.generate needs the 'category+defect' names (the semantic map)")
        text_names = [n if isinstance(n, str) else list(n)[0] for n in names]
        return {"text": super().generation_conditioning(captions, text_names, masks),
                "grounding": self.grounding_tokens(masks, names)}

    def sampling_plan(self, cond: dict, latent_mask: torch.Tensor, z_bg: torch.Tensor,
                      writeback: Optional[str] = None, farm_mode: Optional[str] = None):
        """``(denoiser, guidance)`` for ``sampler.sample``: the UNet with LoRA and GSM on the text and SCM
        tokens of ``cond`` (``generation_conditioning``), and a guidance with M, z_bg and the latent
        write-back (default the model's ``writeback``). FAST's ``farm_mode`` is accepted and ignored."""
        from ldm.models.diffusion.samplers.guidance import MaskGuidance

        return (self.denoiser(cond["text"], cond["grounding"]),
                MaskGuidance(latent_mask, z_bg=z_bg, writeback=writeback or self.writeback))

    def log_sampler_steps(self, steps: int) -> int:
        return max(int(steps), 3)  # NDI + AIAS needs at least one segment and the two refinement steps

    # ------------------------------------------------------------------ artifacts
    def load_artifacts(self, dirpath, step: int) -> None:
        """As ``ArtifactsMixin``, after checking that the files were written by a run with this model's
        ablation settings and that the SCM file holds every name this model needs."""
        from pathlib import Path

        from utils.safe_load import extract_state_dict, safe_load

        d = Path(dirpath)
        if self.gsm is None and any((d / f"gsm-{step}{ext}").is_file() for ext in (".pt", ".safetensors")):
            raise UserError(f"{d} holds gsm-{step} (a run with GSM) but this config sets gsm: false")
        path = d / f"scm-{step}.pt"
        if path.is_file():
            sd = extract_state_dict(safe_load(path))
            if ("mask_token" in sd) != self.scm.binary_map:
                raise UserError(f"{path} was trained with scm binary_map: {str('mask_token' in sd).lower()}, this "
                                f"config sets binary_map: {str(self.scm.binary_map).lower()}")
            held = sorted(k[len("anomaly_tokens."):] for k in sd if k.startswith("anomaly_tokens."))
            mine = sorted(self.scm.anomaly_tokens)
            if held != mine:
                raise UserError(f"{path} holds SCM anomaly tokens {held}, this config builds {mine}; build the "
                                "model with the names the run trained (personalization_config / scm_names)")
        super().load_artifacts(dirpath, step)


def _context_dim(unet) -> int:
    from ldm.modules.attention import BasicTransformerBlock

    for m in unet.modules():
        if isinstance(m, BasicTransformerBlock):
            return int(m.attn2.to_k.in_features)
    raise UserError("GroundingAnomaly needs a UNet with spatial transformers (use_spatial_transformer: true)")


# the steps --weight_idx accepts (the class knows its artifact prefixes)
available_artifact_steps = GroundingAnomaly.artifact_steps
