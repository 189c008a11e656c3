"""Baseline anomaly synthesizers writing the generate_with_mask.py pairs layout.

``get_synthesizer(name, size, **kw)`` returns a callable ``(image, mask, rng) -> (image, mask)`` on
H×W×3 float images in [-1, 1] and H×W {0, 1} masks; ``common.synthesize_pairs`` feeds it from
``ldm.data.generation_inputs.GenerationInputs`` and writes ``<out>/<sample>/<anomaly>/{image,mask,image-mask-ori}``.
"""
from __future__ import annotations

from utils.errors import UserError

METHODS = ("draem", "cutpaste", "normal")


def get_synthesizer(name: str, size=256, **kwargs):
    """Build a baseline synthesizer by name (``draem``, ``cutpaste``, ``normal``)."""
    if name == "draem":
        from ldm.synthesizers.draem import DraemSynthesizer

        return DraemSynthesizer(size=size, **kwargs)
    if name == "cutpaste":
        from ldm.synthesizers.cutpaste import CutPasteSynthesizer

        return CutPasteSynthesizer(**kwargs)
    if name == "normal":
        from ldm.synthesizers.normal import NormalSynthesizer

        return NormalSynthesizer(**kwargs)
    raise UserError(f"unknown --method '{name}'; known: {', '.join(METHODS)}")
