"""SegFormer (the paper's real-time family) from a ``transformers`` config -- never from the hub.

Why: FAST's tables use SegFormer; ``transformers`` ships the architecture, so we can build MiT-b0..b2
with random weights, or load a checkpoint directory the user already has on disk
(``save_pretrained`` layout: ``config.json`` + weights).  Inputs stay in the project convention
([-1, 1]) and are mapped to ImageNet normalisation here, as pretrained MiT encoders expect.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

# Encoder widths/depths of the published MiT variants (decoder width 256 for b0/b1, 768 above);
# "tiny" is a project-only toy size for tests.
VARIANTS = {
    "tiny": dict(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4],
                 decoder_hidden_size=32),
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def segformer_config(variant: str = "b0", num_labels: int = 2, **overrides):
    """A ``SegformerConfig`` for ``variant`` (tiny, b0, b1, b2) with ``num_labels`` classes."""
    from transformers import SegformerConfig

    if variant not in VARIANTS:
        raise ValueError(f"unknown SegFormer variant '{variant}'; known: {', '.join(VARIANTS)}")
    kw = dict(VARIANTS[variant])
    kw.update(overrides)
    return SegformerConfig(num_labels=num_labels, **kw)


class SegFormerSegmenter(nn.Module):
    """Wrap ``SegformerForSemanticSegmentation``: [-1, 1] images in, full-resolution logits out.

    SegFormer predicts at 1/4 resolution; logits are upsampled bilinearly to the input size so the
    loss and metrics see the same grid as the mask.  With ``pretrained_dir`` the architecture comes
    from that folder's ``config.json`` (``variant`` is ignored) and the decode head is re-initialised
    for ``num_classes`` if its size differs.
    """

    def __init__(self, variant: str = "b0", num_classes: int = 2, pretrained_dir: str | None = None,
                 config: dict | None = None):
        super().__init__()
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        if config is not None:                      # rebuilding from a saved checkpoint
            self.model = SegformerForSemanticSegmentation(SegformerConfig(**config))
        elif pretrained_dir is not None:
            path = Path(pretrained_dir).expanduser()
            if not (path / "config.json").is_file():
                raise FileNotFoundError(f"--segformer_dir {path}: no config.json (expected a local "
                                        "save_pretrained directory; nothing is downloaded)")
            self.model = SegformerForSemanticSegmentation.from_pretrained(
                str(path), num_labels=num_classes, ignore_mismatched_sizes=True, local_files_only=True)
        else:
            self.model = SegformerForSemanticSegmentation(segformer_config(variant, num_classes))
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def config_dict(self) -> dict:
        """The full config, stored in checkpoints so a model reloads without the original directory."""
        return self.model.config.to_dict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x + 1.0) / 2.0 - self.mean) / self.std
        logits = self.model(pixel_values=x).logits
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
