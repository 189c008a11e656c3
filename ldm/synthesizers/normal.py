"""The "normal only" baseline: pairs are the untouched normal image with an empty mask.

Why: a segmenter trained on it learns to predict background everywhere; its scores are the floor
every real synthesizer must beat under the same budget and segmenter.
"""
from __future__ import annotations

import numpy as np


class NormalSynthesizer:
    """``(image, mask, rng) -> (image, zeros)``; the mask source is ignored."""

    name = "normal"
    uses_mask_source = False
    writes_empty_masks = True

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        image = np.asarray(image, np.float32)
        return image.copy(), np.zeros(image.shape[:2], np.float32)
