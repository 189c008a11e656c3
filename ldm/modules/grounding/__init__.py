"""GroundingAnomaly's additions to a frozen LDM backbone (``ldm.models.diffusion.grounding``).

- :mod:`.scm`  -- SCM: per-pixel semantic map of learned product / anomaly tokens → conv encoder →
  conditioning tokens in the text-conditioning space;
- :mod:`.gsm`  -- GSM: GLIGEN-style gated self-attention over [visual tokens, conditioning tokens],
  inserted between self- and cross-attention of every ``BasicTransformerBlock``;
- :mod:`.lora` -- LoRA on the attention projections, added by forward hooks.

Nothing here renames or re-registers a backbone parameter: the new modules live in the model under
their own names (``scm.*``, ``gsm.*``, ``lora.*``) and reach the UNet through a plain callable
attribute (GSM) or forward hooks (LoRA).
"""
from .gsm import GatedSelfAttention, install_gsm, uninstall_gsm
from .lora import LoRA, install_lora
from .scm import SpatialConditioning, TinyConvEncoder, build_map_encoder

__all__ = ["GatedSelfAttention", "LoRA", "SpatialConditioning", "TinyConvEncoder", "build_map_encoder",
           "install_gsm", "install_lora", "uninstall_gsm"]
